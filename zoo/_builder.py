"""Assembly shared by every family: backbone + decoder + the head set of a variant."""
from typing import Literal, Optional

from torch import nn

from .backbone import PointSpec, SupervisableBackbone
from .imachsr import HeadSet, Weight, supervision_cfg
from .segmentor import Segmentor

Supervision = Optional[Literal['ds', 'imachsr']]


def build_segmentor(backbone: SupervisableBackbone, decoder: nn.Module, num_classes: int,
                    supervision: Supervision = None, points: PointSpec = None,
                    alpha: Optional[Weight] = None, beta: Optional[Weight] = None,
                    ne_on: str = 'logits', adapter_chs: Optional[int] = None) -> Segmentor:
    """A baseline (``supervision=None``), classic deep supervision (``'ds'``) or iMacHSR model.

    ``points`` picks the supervised transition points (``backbone.select_points`` rules;
    ``None`` means ``'auto'``); one ``DimensionAdapter`` of ``adapter_chs`` hidden channels is
    built for each. Loss weights default as in ``supervision_cfg``.
    """
    if supervision is None:
        extras = {k: v for k, v in dict(points=points, alpha=alpha, beta=beta, adapter_chs=adapter_chs).items()
                  if v is not None}
        if extras:
            raise ValueError(f'{sorted(extras)} configure a head set, and a baseline model has none: '
                             'use the _imachsr or _ds variant of this model')
        return Segmentor(backbone, decoder, num_classes)
    selected = backbone.select_points('auto' if points is None else points)
    if not selected:
        raise ValueError(f'points={points!r} selects no point: a {supervision} model needs at least one; '
                         f'valid points: {backbone.point_names}')
    cfg = supervision_cfg(supervision, [p['name'] for p in selected], alpha, beta, ne_on)
    return Segmentor(backbone, decoder, num_classes, HeadSet(selected, num_classes, adapter_chs), cfg)


def check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f'num_classes must be an integer of at least 2, got {num_classes!r}')
    return num_classes
