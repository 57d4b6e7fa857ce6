"""Any timm model (or any CNN) as a ``SupervisableBackbone``."""
import logging
from typing import Any, Optional, Sequence, Union

import timm
from torch import Tensor, nn

from zoo.backbone import SupervisableBackbone, TransitionPoint, capture_points, trace_transition_points, transition_point

_logger = logging.getLogger(__name__)


def _timm_points(model: nn.Module) -> list[TransitionPoint]:
    """timm's own ``feature_info`` as transition points: stage ends, or attention blocks."""
    points = []
    for info in model.feature_info:
        module = model.get_submodule(info['module'])
        kind = 'attention' if hasattr(module, 'attn') else 'stage'
        points.append(transition_point(info['module'], f'model.{info["module"]}', info['num_chs'],
                                       info['reduction'], kind))
    return points


class TimmBackbone(SupervisableBackbone):
    """Wraps a timm model (by name) or any ``nn.Module`` CNN.

    Candidate points are timm's ``feature_info``, read in one pass with
    ``forward_intermediates`` (which also turns ViT tokens into NCHW maps). A model without
    that API gets its points from a shape trace (``trace_transition_points``) and is read
    with forward hooks; ``use_intermediates=False`` asks for the trace on a timm model too.
    ``out_points`` (names or indices) are the decoder's features; default: the last point.
    ``points='auto'`` supervises the first three points past the stem (stride >= 4).
    """

    def __init__(self, model: Union[str, nn.Module], in_chans: int = 3,
                 output_stride: Optional[int] = None, out_points: Sequence[Union[str, int]] = (-1,),
                 use_intermediates: Optional[bool] = None, pretrained_file: Optional[str] = None,
                 **timm_kwargs: Any):
        super().__init__()
        self.in_chans = in_chans
        if isinstance(model, str):
            model = _create_timm_model(model, in_chans, output_stride, pretrained_file, **timm_kwargs)
        elif output_stride or pretrained_file or timm_kwargs:
            raise ValueError('output_stride, pretrained_file and timm arguments apply to a timm model '
                             'name, not to a module passed in')
        self.model = model
        can_intermediate = hasattr(model, 'forward_intermediates') and hasattr(model, 'feature_info')
        self.use_intermediates = can_intermediate if use_intermediates is None else use_intermediates
        if self.use_intermediates and not can_intermediate:
            raise ValueError(f'{type(model).__name__} has no forward_intermediates/feature_info')
        self.feature_info = (_timm_points(model) if self.use_intermediates
                             else trace_transition_points(model, in_chans, prefix='model.'))
        # The stem (stride 2) has seen one or two convolutions: nothing there to supervise yet.
        past_stem = [p['name'] for p in self.feature_info if p['reduction'] >= 4]
        self.auto_points = ','.join(past_stem[:3])
        self.out_points = tuple(self.feature_info[i]['name'] if isinstance(i, int) else self.point(i)['name']
                                for i in out_points)

    def forward(self, x: Tensor, points: Sequence[str] = ()) -> tuple[list[Tensor], dict[str, Tensor]]:
        wanted = list(dict.fromkeys([*self.out_points, *points]))
        if self.use_intermediates:
            indices = sorted({self.point_index(name) for name in wanted})
            outputs = self.model.forward_intermediates(x, indices=indices, intermediates_only=True,
                                                       output_fmt='NCHW', stop_early=True)
            tensors = {self.feature_info[i]['name']: t for i, t in zip(indices, outputs)}
        else:
            with capture_points(self, [self.point(name) for name in wanted]) as tensors:
                getattr(self.model, 'forward_features', self.model.forward)(x)
        return [tensors[name] for name in self.out_points], {name: tensors[name] for name in points}

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return self.forward(x)[0]


def _create_timm_model(name: str, in_chans: int, output_stride: Optional[int],
                       pretrained_file: Optional[str], **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for use as a backbone: no classifier, weights only from a user's file.

    ``output_stride`` is a maximum: CNNs dilate their last stages to reach it, a model already
    that fine (a ViT at 1/16) is built as it is. ViT-style models get ``dynamic_img_size=True``
    so that any input size works.
    """
    name = name.removeprefix('tu-')
    if not timm.is_model(name):
        raise ValueError(f'unknown timm model {name!r} (timm.list_models() lists them)')
    kwargs = dict(kwargs, in_chans=in_chans, num_classes=0)
    if pretrained_file:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={'file': str(pretrained_file)})
    optional = {'dynamic_img_size': True}
    if output_stride and output_stride != 32:
        optional['output_stride'] = output_stride
    model = _create_without_unsupported(name, optional, kwargs)
    stride = max(info['reduction'] for info in model.feature_info)
    if output_stride and stride > output_stride:
        raise ValueError(f'timm model {name!r} cannot reach output stride {output_stride} (its own '
                         f'is {stride}); pass output_stride={stride}')
    return model


def _create_without_unsupported(name: str, optional: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """Build with the ``optional`` arguments the model's constructor accepts."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(name, **kwargs, **optional)
        except TypeError as error:
            rejected = [key for key in optional if f"'{key}'" in str(error)]
            if not rejected:
                raise
            _logger.debug('%s takes no %s', name, rejected)
            for key in rejected:
                del optional[key]
