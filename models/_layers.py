"""Blocks shared by the mobile families (TopFormer, SeaFormer)."""
from typing import Optional, Type

from timm.layers import DropPath
from torch import Tensor, nn


class ConvBN(nn.Sequential):
    """Conv (no bias) - BN - optional activation; ``padding`` defaults to 'same' for odd kernels."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 padding: Optional[int] = None, groups: int = 1, dilation: int = 1,
                 act_layer: Optional[Type[nn.Module]] = None, bn_weight_init: float = 1.0):
        padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        layers = [nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=False),
                  nn.BatchNorm2d(out_chs)]
        nn.init.constant_(layers[1].weight, bn_weight_init)
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand - kxk depthwise (stride) - 1x1 project, residual if shapes allow."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 1.0, act_layer: Type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        layers = [ConvBN(in_chs, hidden, act_layer=act_layer)] if expand_ratio != 1 else []
        layers += [ConvBN(hidden, hidden, kernel_size, stride, groups=hidden, act_layer=act_layer),
                   ConvBN(hidden, out_chs)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class ConvMlp(nn.Module):
    """Transformer MLP on NCHW maps with a 3x3 depthwise conv (TopFormer, SeaFormer).

    1x1 conv-BN (expand to ``hidden_chs``) - 3x3 depthwise conv (bias) - activation - 1x1 conv-BN;
    the depthwise conv mixes neighbouring tokens, which a pointwise MLP cannot.
    """

    def __init__(self, in_chs: int, hidden_chs: int, out_chs: Optional[int] = None,
                 act_layer: Type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc1 = ConvBN(in_chs, hidden_chs)
        self.dwconv = nn.Conv2d(hidden_chs, hidden_chs, 3, 1, 1, groups=hidden_chs)
        self.act = act_layer()
        self.fc2 = ConvBN(hidden_chs, out_chs or in_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Transformer block on NCHW token maps (TopFormer, SeaFormer): ``attn`` then a ``ConvMlp``.

        x = x + DropPath(attn(x));  x = x + DropPath(mlp(x))

    No LayerNorm: both branches end in conv-BN. ``drop_path`` is the stochastic-depth rate.
    """

    def __init__(self, attn: nn.Module, dim: int, mlp_ratio: float = 2.0,
                 act_layer: Type[nn.Module] = nn.ReLU, drop_path: float = 0.0):
        super().__init__()
        self.attn = attn
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))
