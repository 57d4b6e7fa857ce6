"""``create_model``: names, weights and checkpoints to a ready ``Segmentor``."""
import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file
from torch import nn

from ._hub import resolve_weight_file
from ._registry import get_pretrained_cfg, model_entrypoint, split_model_name_tag
from .backbone import PointSpec

_logger = logging.getLogger(__name__)


def create_model(model_name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 points: PointSpec = None, checkpoint_path: Union[str, Path, None] = None,
                 **kwargs: Any) -> nn.Module:
    """Create a registered model by name.

    Args:
        model_name: ``arch`` or ``arch.tag`` (a tag picks a published weight's config), or an
            alias such as ``topformer_imachsr``.
        pretrained: load the published weight.
        num_classes: output classes (default: the weight's, else the architecture's).
        points: supervised transition points of a ``_ds``/``_imachsr`` model
            (see ``zoo.select_points``); ``None`` keeps the model's ``'auto'`` choice.
        checkpoint_path: a ``.safetensors`` or torch checkpoint to load afterwards (strict).
        **kwargs: model arguments, e.g. ``backbone='convnext_atto'`` for DeepLabv3+.
    """
    entrypoint = model_entrypoint(model_name)
    tag = split_model_name_tag(model_name)[1]
    cfg = get_pretrained_cfg(model_name) if pretrained or tag else None
    if num_classes is None and cfg is not None:
        num_classes = cfg.num_classes
    model_args = {k: v for k, v in dict(num_classes=num_classes, points=points).items() if v is not None}
    model_args.update(kwargs)
    model = entrypoint(**model_args)
    model.architecture = entrypoint.__name__
    if model.supervision is not None:
        model_args['points'] = list(model.supervision.points)
    model.model_args = {'num_classes': model.num_classes, **model_args}
    if cfg is not None:
        model.pretrained_cfg.update(cfg.to_dict())
    if pretrained:
        load_checkpoint(model, resolve_weight_file(cfg))
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


def load_checkpoint(model: nn.Module, path: Union[str, Path], strict: bool = True):
    """Load a ``.safetensors`` file or a torch checkpoint (``state_dict``/``model`` inside one is
    found, a DDP ``module.`` prefix dropped) into ``model``; returns torch's key report."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        if path.suffix == '.safetensors':
            state = load_file(str(path))  # fp16-stored weights upcast in load_state_dict's copy_
        else:
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise RuntimeError(f'checkpoint {path} could not be read ({error}); is it truncated or corrupt?') from error
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise RuntimeError(f'checkpoint {path} holds a {type(state).__name__}, not a state_dict')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    try:
        report = model.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        raise RuntimeError(f'checkpoint {path} does not fit {type(model).__name__}: {error}') from error
    _logger.debug('loaded %s (missing %s, unexpected %s)', path, report.missing_keys, report.unexpected_keys)
    return report
