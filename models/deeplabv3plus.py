"""DeepLabv3+ (Chen et al., ECCV 2018) on any timm backbone.

The decoder follows segmentation_models_pytorch / mmseg's depthwise-separable variant: ASPP
with separable atrous convs (rates 12/24/36 at output stride 16) and image pooling, a 1/4
low-level skip reduced to 48 channels, a separable 3x3 fusion conv, and a 1x1 classifier.
"""
import logging
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._builder import Supervision, build_segmentor, check_num_classes
from zoo._pretrained import camvid_cfg
from zoo._registry import register_model, register_model_alias
from zoo.backbone import PointSpec, TransitionPoint
from zoo.segmentor import Segmentor

from .timm_backbone import TimmBackbone

_logger = logging.getLogger(__name__)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, dilation: int = 1,
                 separable: bool = False):
        padding = dilation * (kernel_size - 1) // 2
        if separable and kernel_size > 1:
            conv = [nn.Conv2d(in_chs, in_chs, kernel_size, padding=padding, dilation=dilation,
                              groups=in_chs, bias=False),
                    nn.Conv2d(in_chs, out_chs, 1, bias=False)]
        else:
            conv = [nn.Conv2d(in_chs, out_chs, kernel_size, padding=padding, dilation=dilation, bias=False)]
        super().__init__(*conv, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    """ASPP's global branch. No BatchNorm: on a 1x1 map it fails for a batch of one."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous separable 3x3, image pooling; projected."""

    def __init__(self, in_chs: int, out_chs: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                 dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_chs, out_chs)]
            + [ConvBNReLU(in_chs, out_chs, 3, rate, separable=True) for rate in atrous_rates]
            + [ImagePooling(in_chs, out_chs)])
        self.project = nn.Sequential(ConvBNReLU(len(self.branches) * out_chs, out_chs), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], 1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest feature, upsampled onto the 48-channel low-level skip, fused, classified.

    Takes ``[low_level, high_level]`` and returns logits at the low-level feature's stride.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 low_level_channels: int = 48, atrous_rates: Sequence[int] = (12, 24, 36)):
        super().__init__()
        low_chs, high_chs = in_channels
        self.aspp = nn.Sequential(ASPP(high_chs, channels, atrous_rates),
                                  ConvBNReLU(channels, channels, 3, separable=True))
        self.low_level = ConvBNReLU(low_chs, low_level_channels)
        self.fuse = ConvBNReLU(channels + low_level_channels, channels, 3, separable=True)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        low, high = features
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode='bilinear', align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, self.low_level(low)], 1)))


def low_level_point(points: Sequence[TransitionPoint], max_reduction: int = 4) -> TransitionPoint:
    """The deepest point at stride <= 4 (the paper's 1/4 skip), else the shallowest point."""
    shallow = [p for p in points if p['reduction'] <= max_reduction]
    return shallow[-1] if shallow else points[0]


def _deeplab_encoder(backbone: str, output_stride: Optional[int], **kwargs: Any) -> TimmBackbone:
    """The backbone at ``output_stride``; ``None`` asks for 16 where the backbone can dilate
    (ResNets, ConvNeXts, ...) and keeps the native stride where it cannot (MobileNetV3, ...)."""
    if output_stride is not None:
        return TimmBackbone(backbone, output_stride=output_stride, **kwargs)
    try:
        return TimmBackbone(backbone, output_stride=16, **kwargs)
    except ValueError as error:
        _logger.info('%s: keeping its native output stride (%s)', backbone, error)
        return TimmBackbone(backbone, **kwargs)


def _create_deeplabv3plus(backbone: str = 'resnet18', num_classes: int = 150, supervision: Supervision = None,
                          points: PointSpec = None, alpha=None, beta=None, ne_on: str = 'logits',
                          adapter_chs: Optional[int] = None, output_stride: Optional[int] = None,
                          in_chans: int = 3, pretrained_backbone: Optional[str] = None,
                          decoder_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                          **backbone_kwargs: Any) -> Segmentor:
    """``atrous_rates`` are meant for output stride 16 and scale with the stride actually used."""
    check_num_classes(num_classes)
    encoder = _deeplab_encoder(backbone, output_stride, in_chans=in_chans,
                               pretrained_file=pretrained_backbone, **backbone_kwargs)
    deepest = encoder.feature_info[-1]
    encoder.out_points = (low_level_point(encoder.feature_info)['name'], deepest['name'])
    rates = [max(1, rate * 16 // deepest['reduction']) for rate in atrous_rates]
    decoder = DeepLabV3PlusDecoder(encoder.out_channels, num_classes, decoder_channels, atrous_rates=rates)
    return build_segmentor(encoder, decoder, num_classes, supervision, points, alpha, beta, ne_on, adapter_chs)


# Trained on CamVid train by references/camvid/experiments.py (README: Results), best of its seeds;
# metrics from zoo eval on CamVid val. Files in weights/, sha256-checked.
default_cfgs = [
    camvid_cfg('deeplabv3plus_resnet18_imachsr', '31f787de7591f4268f2b4974d333385ecdb264abdc7efcb50b472c9df549c69c',
               {'aAcc': 71.3411, 'mIoU': 28.1527, 'mF1': 34.1829, 'mPrecision': 61.5483, 'mRecall': 37.5501}),
]


@register_model
def deeplabv3plus_resnet18(**kwargs: Any) -> Segmentor:
    """DeepLabv3+ on ResNet-18 at output stride 16 (``backbone=`` takes any timm model name)."""
    return _create_deeplabv3plus(**kwargs)


@register_model
def deeplabv3plus_resnet18_ds(**kwargs: Any) -> Segmentor:
    """DeepLabv3+ ResNet-18 with classic deep supervision (CE at the points)."""
    return _create_deeplabv3plus(supervision='ds', **kwargs)


@register_model
def deeplabv3plus_resnet18_imachsr(**kwargs: Any) -> Segmentor:
    """DeepLabv3+ ResNet-18 with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_deeplabv3plus(supervision='imachsr', **kwargs)


register_model_alias('deeplabv3plus_imachsr', 'deeplabv3plus_resnet18_imachsr')
