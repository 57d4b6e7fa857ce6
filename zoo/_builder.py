"""Assembly shared by every family: backbone + decoder + the head set of a variant."""
import logging
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .backbone import PointSpec, SupervisableBackbone
from .imachsr import HeadSet, Weight, supervision_cfg
from .hub import read_state_dict
from .segmentor import Segmentor

_logger = logging.getLogger(__name__)

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


def load_backbone_checkpoint(backbone: nn.Module, path: Union[str, Path], key_map: Callable[[str], str],
                             segmentation_only: tuple[str, ...] = ()) -> _IncompatibleKeys:
    """Load ImageNet weights a user brings (official key layout or ours) into ``backbone``, non-strictly.

    Keys lose a ``backbone.`` prefix and go through ``key_map`` (official name -> ours; ours
    unchanged). Returns torch's report of missing and unexpected keys, also logged: at WARNING
    if anything is missing besides the ``segmentation_only`` modules, which an ImageNet
    classifier never has. A tensor whose shape differs from ours is an error.
    """
    state = {key_map(k.removeprefix('backbone.')): v for k, v in read_state_dict(path).items()}
    own = backbone.state_dict()
    mismatched = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    if mismatched:
        raise RuntimeError(f'backbone checkpoint {path} does not fit {type(backbone).__name__}: '
                           f'shape mismatch: {mismatched[:6]}')
    report = backbone.load_state_dict(state, strict=False)
    unusual = any(not k.startswith(segmentation_only) for k in report.missing_keys)
    _logger.log(logging.WARNING if unusual else logging.INFO,
                'loaded backbone weights from %s: %d tensors; missing %s; unexpected %s', path,
                len(state) - len(report.unexpected_keys), report.missing_keys, report.unexpected_keys)
    return report
