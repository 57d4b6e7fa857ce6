"""``create_model``: names, weights and checkpoints to a ready ``Segmentor``."""
import logging
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ._registry import get_pretrained_cfg, model_entrypoint, split_model_name_tag
from .backbone import PointSpec
from .hub import from_pretrained, load_checkpoint, resolve_weight_file

_logger = logging.getLogger(__name__)


def create_model(model_name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 points: PointSpec = None, checkpoint_path: Union[str, Path, None] = None,
                 strict: bool = False, **kwargs: Any) -> nn.Module:
    """Create a registered model by name.

    Args:
        model_name: ``arch`` or ``arch.tag`` (a tag picks a published weight's config), an alias
            such as ``topformer_imachsr``, ``hf-hub:org/name[@revision]`` or ``local-dir:/path``
            (a weight folder, see ``zoo.hub.from_pretrained``).
        pretrained: load the published weight: from ``checkpoint_path`` if given, else
            ``$ZOO_WEIGHTS_DIR`` or the repository's ``weights/``, else the Hugging Face Hub.
        num_classes: output classes (default: the weight's, else the architecture's).
        points: supervised transition points of a ``_ds``/``_imachsr`` model
            (see ``zoo.select_points``); ``None`` keeps the model's ``'auto'`` choice.
        checkpoint_path: a ``.safetensors`` file or torch checkpoint to load.
        strict: demand that loaded weights match exactly; otherwise head-set tensors and
            classifiers of another ``num_classes`` may differ and are reported.
        **kwargs: model arguments, e.g. ``backbone='convnext_atto'`` for DeepLabv3+.
    """
    overrides = {k: v for k, v in dict(num_classes=num_classes, points=points).items() if v is not None}
    if model_name.startswith(('hf-hub:', 'local-dir:')):
        source = model_name.split(':', 1)[1]
        revision = None
        if model_name.startswith('hf-hub:') and '@' in source:
            source, revision = source.split('@', 1)
        return from_pretrained(source, revision=revision, strict=strict, **overrides, **kwargs)
    entrypoint = model_entrypoint(model_name)
    tag = split_model_name_tag(model_name)[1]
    cfg = get_pretrained_cfg(model_name) if pretrained or tag else None
    if 'num_classes' not in overrides and cfg is not None:
        overrides['num_classes'] = cfg.num_classes
    model_args = {**overrides, **kwargs}
    model = entrypoint(**model_args)
    model.architecture = entrypoint.__name__
    if model.supervision is not None:
        model_args['points'] = list(model.supervision.points)
    model.model_args = {'num_classes': model.num_classes, **model_args}
    if cfg is not None:
        model.pretrained_cfg.update(cfg.to_dict())
    if checkpoint_path is not None:
        _logger.debug('%s: loading checkpoint %s', model_name, checkpoint_path)
        load_checkpoint(model, checkpoint_path, strict=strict)
    elif pretrained:
        load_checkpoint(model, resolve_weight_file(cfg), strict=strict)
    return model
