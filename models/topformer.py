"""TopFormer: Token Pyramid Transformer for mobile semantic segmentation (Zhang et al., CVPR 2022).

A MobileNetV2 token pyramid yields local tokens at 1/4, 1/8, 1/16 and 1/32. They are average-pooled
to 1/64, concatenated and mixed by four transformer blocks into scale-aware global semantics; the
semantics of each scale are injected back into its local tokens at 1/8, 1/16 and 1/32 (SIM), and
SimpleHead sums the injected features at 1/8 and classifies them. Sizes follow the official configs
(hustvl/TopFormer ``local_configs/topformer/topformer_{tiny,small,base}.py``); paper: arXiv 2204.05525.
"""
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._builder import Supervision, build_segmentor, check_num_classes, load_backbone_checkpoint
from zoo._pretrained import camvid_cfg
from zoo._registry import register_model, register_model_alias
from zoo.backbone import PointSpec, SupervisableBackbone, TransitionPoint, transition_point
from zoo.imachsr import Weight
from zoo.segmentor import Segmentor

from zoo.layers import SafeBatchNorm2d

from ._layers import ConvBN, InvertedResidual, TransformerBlock

BlockCfg = tuple[int, int, int, int]  # kernel, expansion, out channels, stride

# Token pyramid after the 16-channel stride-2 stem (tpm.0): block i is tpm.i, the official `layer{i}`.
# `taps` are the blocks whose outputs become tokens, `embed_chs` the SIM/decoder width; TopFormer-Tiny's
# decoder fuses with a depthwise 1x1 conv (`is_dw=True` in its config only).
_ARCH_CFGS: dict[str, dict[str, Any]] = {
    'tiny': dict(
        blocks=((3, 1, 16, 1), (3, 4, 16, 2), (3, 3, 16, 1), (5, 3, 32, 2), (5, 3, 32, 1),
                (3, 3, 64, 2), (3, 3, 64, 1), (5, 6, 96, 2), (5, 6, 96, 1)),
        taps=(3, 5, 7, 9), embed_chs=128, num_heads=4, depthwise_fuse=True),
    'small': dict(
        blocks=((3, 1, 16, 1), (3, 4, 24, 2), (3, 3, 24, 1), (5, 3, 48, 2), (5, 3, 48, 1),
                (3, 3, 96, 2), (3, 3, 96, 1), (5, 6, 128, 2), (5, 6, 128, 1), (3, 6, 128, 1)),
        taps=(3, 5, 7, 10), embed_chs=192, num_heads=6, depthwise_fuse=False),
    'base': dict(
        blocks=((3, 1, 16, 1), (3, 4, 32, 2), (3, 3, 32, 1), (5, 3, 64, 2), (5, 3, 64, 1),
                (3, 3, 128, 2), (3, 3, 128, 1), (5, 6, 160, 2), (5, 6, 160, 1), (3, 6, 160, 1)),
        taps=(3, 5, 7, 10), embed_chs=256, num_heads=8, depthwise_fuse=False),
}


class Attention(nn.Module):
    """Multi-head self-attention over a token map with 1x1 conv-BN projections.

        A_h = softmax(Q_h K_h^T),  out = ConvBN(act([A_1 V_1, ..., A_H V_H]))

    Q and K have ``key_dim`` channels per head, V ``attn_ratio * key_dim``. The logits are not
    scaled by ``key_dim^-1/2``: the official code defines that scale but never applies it, and its
    checkpoints were trained without it.
    """

    def __init__(self, dim: int, key_dim: int = 16, num_heads: int = 8, attn_ratio: float = 2.0,
                 act_layer: Type[nn.Module] = nn.ReLU6):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.to_q = ConvBN(dim, key_dim * num_heads)
        self.to_k = ConvBN(dim, key_dim * num_heads)
        self.to_v = ConvBN(dim, self.val_dim * num_heads)
        self.proj = nn.Sequential(act_layer(), ConvBN(self.val_dim * num_heads, dim))

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        q = self.to_q(x).reshape(n, self.num_heads, self.key_dim, h * w).transpose(2, 3)
        k = self.to_k(x).reshape(n, self.num_heads, self.key_dim, h * w)
        v = self.to_v(x).reshape(n, self.num_heads, self.val_dim, h * w).transpose(2, 3)
        out = torch.matmul(torch.matmul(q, k).softmax(-1), v)  # (n, heads, h w, val_dim)
        return self.proj(out.transpose(2, 3).reshape(n, -1, h, w))


class PyramidPoolAgg(nn.Module):
    """Average-pools token map i with kernel = stride = ``kernels[i]`` to the token scale and concatenates.

    The official module adaptive-pools every map to ceil(H32 / 2) x ceil(W32 / 2). On an input
    padded to a multiple of 64 (``pad_multiple``) that is exactly this fixed-kernel pooling, which
    exports to ONNX as a plain AvgPool; ``ceil_mode`` keeps the maps aligned on other sizes too.
    """

    def __init__(self, kernels: Sequence[int]):
        super().__init__()
        self.kernels = tuple(kernels)

    def forward(self, tokens: Sequence[Tensor]) -> Tensor:
        return torch.cat([F.avg_pool2d(t, k, k, ceil_mode=True) for t, k in zip(tokens, self.kernels)], 1)


class SemanticInjection(nn.Module):
    """SIM: local tokens gated and shifted by the global semantics of their scale.

        out = BN(W_l x) * up(hsigmoid(BN(W_a g))) + up(BN(W_e g))

    ``up`` is bilinear upsampling of the 1/64 semantics ``g`` to the local tokens' ``x`` size.
    """

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.local_embedding = ConvBN(in_chs, out_chs)
        self.global_embedding = ConvBN(in_chs, out_chs)
        self.global_act = ConvBN(in_chs, out_chs)
        self.act = nn.Hardsigmoid()  # the official h_sigmoid, relu6(x + 3) / 6

    def forward(self, local_tokens: Tensor, semantics: Tensor) -> Tensor:
        size = local_tokens.shape[-2:]
        gate = F.interpolate(self.act(self.global_act(semantics)), size=size, mode='bilinear', align_corners=False)
        shift = F.interpolate(self.global_embedding(semantics), size=size, mode='bilinear', align_corners=False)
        return self.local_embedding(local_tokens) * gate + shift


class TopFormerBackbone(SupervisableBackbone):
    """Token pyramid (``tpm``) -> pyramid pooling (``pool``) -> transformer (``trans``) -> SIM (``sim``).

    ``tpm.0`` is the stem and ``tpm.i`` the i-th inverted residual; the outputs of ``taps`` are the
    local tokens. ``inject`` picks the taps that get a SIM (official ``decode_out_indices``); their
    outputs, shallow to deep, are what ``forward_features`` returns.

    Transition points, in forward order: each token-pyramid block that downsamples (``downsample``)
    or ends a stride (``stage``), the pooled tokens (``pool``, bottleneck at 1/64), each transformer
    block (``trans.j``, attention) and each injection (``sim.1_8``, ``sim.1_16``, ``sim.1_32``,
    fusion). The pooled tokens set the stride: inputs are padded to a multiple of 64.

    ``points='auto'`` is ``'central:3:2'``, three candidates two apart around the middle of the
    sequence (``tpm.6``, ``tpm.8``, ``pool`` in Tiny and Base): the best of the points, distance
    and position ablations on CamVid val (README: Results).

    Where a map can hold one value per channel -- the 1/64 tokens of an input of at most 64 x 64
    in a batch of one -- the transformer's and the SIMs' BN would fail in training; they are
    ``SafeBatchNorm2d``, which normalises such a batch with its running statistics.
    """

    def __init__(self, blocks: Sequence[BlockCfg], taps: Sequence[int], embed_chs: int, num_heads: int,
                 inject: Sequence[int] = (1, 2, 3), depth: int = 4, key_dim: int = 16,
                 attn_ratio: float = 2.0, mlp_ratio: float = 2.0, c2t_stride: int = 2,
                 drop_path_rate: float = 0.1, stem_chs: int = 16, in_chans: int = 3,
                 act_layer: Type[nn.Module] = nn.ReLU6):
        super().__init__()
        self.in_chans = in_chans
        self.taps = tuple(taps)
        self.inject = tuple(inject)
        layers: list[nn.Module] = [ConvBN(in_chans, stem_chs, 3, 2, act_layer=nn.ReLU)]
        chs, strides = [stem_chs], [2]
        for kernel, expansion, out_chs, stride in blocks:
            layers.append(InvertedResidual(chs[-1], out_chs, kernel, stride, expansion))
            chs.append(out_chs)
            strides.append(strides[-1] * stride)
        self.tpm = nn.Sequential(*layers)
        self.token_chs = [chs[i] for i in self.taps]
        token_stride = strides[self.taps[-1]] * c2t_stride
        self.pool = PyramidPoolAgg([token_stride // strides[i] for i in self.taps])
        dim = sum(self.token_chs)
        self.trans = nn.Sequential(*[
            TransformerBlock(Attention(dim, key_dim, num_heads, attn_ratio, act_layer), dim, mlp_ratio,
                             act_layer, rate)
            for rate in torch.linspace(0, drop_path_rate, depth).tolist()])
        self.sim = nn.ModuleDict({f'1_{strides[self.taps[i]]}': SemanticInjection(self.token_chs[i], embed_chs)
                                  for i in self.inject})
        SafeBatchNorm2d.convert(self.trans)
        SafeBatchNorm2d.convert(self.sim)

        self.feature_info = self._pyramid_points(chs, strides) + [
            transition_point('pool', 'pool', dim, token_stride, 'bottleneck'),
            *(transition_point(f'trans.{j}', f'trans.{j}', dim, token_stride, 'attention') for j in range(depth)),
            *(transition_point(f'sim.{key}', f'sim.{key}', embed_chs, strides[self.taps[i]], 'fusion')
              for key, i in zip(self.sim, self.inject))]
        self.out_points = tuple(f'sim.{key}' for key in self.sim)
        self.auto_points = 'central:3:2'
        self._init_weights()

    @staticmethod
    def _pyramid_points(chs: Sequence[int], strides: Sequence[int]) -> list[TransitionPoint]:
        points = []
        for i, (num_chs, stride) in enumerate(zip(chs, strides)):
            if stride > (strides[i - 1] if i else 1):
                kind = 'downsample'
            elif i + 1 == len(strides) or strides[i + 1] > stride:
                kind = 'stage'
            else:
                continue
            points.append(transition_point(f'tpm.{i}', f'tpm.{i}', num_chs, stride, kind))
        return points

    def _init_weights(self) -> None:
        # The official init_weights: He-normal over each group's fan-out. It also resets every BN
        # weight to 1 (the attention proj's bn_weight_init=0 never takes effect), ConvBN's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        tokens = []
        for i, block in enumerate(self.tpm):
            x = block(x)
            if i in self.taps:
                tokens.append(x)
        semantics = self.trans(self.pool(tokens)).split(self.token_chs, 1)
        return [sim(tokens[i], semantics[i]) for sim, i in zip(self.sim.values(), self.inject)]


class SimpleHead(nn.Module):
    """TopFormer's decoder: the injected features summed at the finest scale, fused and classified.

        y = W_cls Dropout(ReLU(BN(W_fuse sum_i up(F_i))))

    ``W_fuse`` is a 1x1 conv, depthwise if ``depthwise`` (TopFormer-Tiny). Returns logits at the
    stride of the first feature (1/8).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, depthwise: bool = False,
                 dropout: float = 0.1):
        super().__init__()
        chs = in_channels[0]
        if any(c != chs for c in in_channels):
            raise ValueError(f'SimpleHead sums its inputs, so they need equal channels; got {list(in_channels)}')
        self.fuse = ConvBN(chs, chs, groups=chs if depthwise else 1, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(chs, num_classes, 1)
        # mmseg's init: ConvModule He-normal over fan-out, classifier N(0, 0.01)
        nn.init.kaiming_normal_(self.fuse[0].weight, mode='fan_out', nonlinearity='relu')
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[0]
        for feature in features[1:]:
            x = x + F.interpolate(feature, size=x.shape[-2:], mode='bilinear', align_corners=False)
        return self.classifier(self.dropout(self.fuse(x)))


def official_to_zoo_key(key: str, backbone: TopFormerBackbone) -> str:
    """An official TopFormer backbone key -> ours; keys already in our layout pass unchanged.

    ``tpm.stem.0`` -> ``tpm.0``, ``tpm.layer{i}.conv.{j}`` -> ``tpm.{i}.conv.{j // 2}`` (the official
    block interleaves its activations), ``trans.transformer_blocks.{j}`` -> ``trans.{j}``,
    ``SIM.{i}`` -> ``sim.1_{stride}``, and conv-BN pairs ``c``/``conv``, ``bn`` -> ``0``, ``1``.
    """
    sim_keys = {str(i): name for i, name in zip(backbone.inject, backbone.sim)}
    key = key.replace('tpm.stem.0.', 'tpm.0.').replace('trans.transformer_blocks.', 'trans.')
    key = re.sub(r'^tpm\.layer(\d+)\.conv\.(\d+)\.', lambda m: f'tpm.{m[1]}.conv.{int(m[2]) // 2}.', key)
    key = re.sub(r'^SIM\.(\d+)\.', lambda m: f'sim.{sim_keys.get(m[1], m[1])}.', key)
    key = re.sub(r'\.(c|conv)\.weight$', '.0.weight', key)
    return re.sub(r'\.bn\.(\w+)$', r'.1.\1', key)


def _create_topformer(size: str, supervision: Supervision = None, num_classes: int = 150,
                      points: PointSpec = None, alpha: Optional[Weight] = None,
                      beta: Optional[Weight] = None, ne_on: str = 'logits',
                      adapter_chs: Optional[int] = None, in_chans: int = 3,
                      pretrained_backbone: Union[str, Path, None] = None, **kwargs: Any) -> Segmentor:
    """TopFormer of ``size`` ('tiny', 'small', 'base'); ``kwargs`` override ``TopFormerBackbone`` arguments."""
    check_num_classes(num_classes)
    if size not in _ARCH_CFGS:
        raise ValueError(f'unknown TopFormer size {size!r}; sizes: {list(_ARCH_CFGS)}')
    arch = dict(_ARCH_CFGS[size])
    depthwise_fuse = arch.pop('depthwise_fuse')
    backbone = TopFormerBackbone(**{**arch, **kwargs}, in_chans=in_chans)
    if pretrained_backbone is not None:
        load_backbone_checkpoint(backbone, pretrained_backbone, lambda key: official_to_zoo_key(key, backbone),
                                 segmentation_only=('sim.',))
    decoder = SimpleHead(backbone.out_channels, num_classes, depthwise_fuse)
    return build_segmentor(backbone, decoder, num_classes, supervision, points, alpha, beta, ne_on, adapter_chs)


# Trained on CamVid train by references/camvid/experiments.py (README: Results), best of its seeds;
# metrics from zoo eval on CamVid val. Files in weights/, sha256-checked.
default_cfgs = [
    camvid_cfg('topformer_base', 'ec6202846cf1e216e0ee2937eb018e394636ea695a0c23471228707562193e2b',
               {'aAcc': 60.6049, 'mIoU': 19.3847, 'mF1': 23.9948, 'mPrecision': 48.2107, 'mRecall': 30.1034}),
    camvid_cfg('topformer_base_ds', '2f8a12a0ec05c9f0462ade475289c30fb4157a75ed33b32ae790751b4d248bd4',
               {'aAcc': 62.0028, 'mIoU': 21.0363, 'mF1': 25.8131, 'mPrecision': 62.9787, 'mRecall': 31.9297}),
    camvid_cfg('topformer_base_imachsr', '22ba9ad1fc2a3e8099c4a3222e7cc1bf4f66943bcacf90a302b94ae89ccc07c0',
               {'aAcc': 59.4497, 'mIoU': 19.3762, 'mF1': 24.2146, 'mPrecision': 47.7623, 'mRecall': 28.6907}),
    camvid_cfg('topformer_tiny', 'c618fcbaba3a2035368bb0289c7b8180d4e9d5b1478e84f371df5aa17911788a',
               {'aAcc': 61.0771, 'mIoU': 19.7962, 'mF1': 24.4445, 'mPrecision': 65.1447, 'mRecall': 30.7274}),
    camvid_cfg('topformer_tiny_ds', 'ee85f659169183a4573aebc3ed4de04e7994c2fa3eb4a2c3941b6c30112e6308',
               {'aAcc': 60.8603, 'mIoU': 20.1639, 'mF1': 24.9151, 'mPrecision': 58.5105, 'mRecall': 31.1815}),
    camvid_cfg('topformer_tiny_imachsr', '45d7a7982d63ae6fa81973ef330765b2881d6bf30483dc270d1cbdbf6ab113e3',
               {'aAcc': 60.0, 'mIoU': 19.8711, 'mF1': 24.5267, 'mPrecision': 58.2838, 'mRecall': 30.5784}),
]


@register_model
def topformer_tiny(**kwargs: Any) -> Segmentor:
    """TopFormer-Tiny (1.4 M parameters at 150 classes)."""
    return _create_topformer('tiny', **kwargs)


@register_model
def topformer_tiny_ds(**kwargs: Any) -> Segmentor:
    """TopFormer-Tiny with classic deep supervision (CE at the points)."""
    return _create_topformer('tiny', supervision='ds', **kwargs)


@register_model
def topformer_tiny_imachsr(**kwargs: Any) -> Segmentor:
    """TopFormer-Tiny with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_topformer('tiny', supervision='imachsr', **kwargs)


@register_model
def topformer_small(**kwargs: Any) -> Segmentor:
    """TopFormer-Small (3.1 M parameters at 150 classes)."""
    return _create_topformer('small', **kwargs)


@register_model
def topformer_small_ds(**kwargs: Any) -> Segmentor:
    """TopFormer-Small with classic deep supervision (CE at the points)."""
    return _create_topformer('small', supervision='ds', **kwargs)


@register_model
def topformer_small_imachsr(**kwargs: Any) -> Segmentor:
    """TopFormer-Small with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_topformer('small', supervision='imachsr', **kwargs)


@register_model
def topformer_base(**kwargs: Any) -> Segmentor:
    """TopFormer-Base (5.1 M parameters at 150 classes)."""
    return _create_topformer('base', **kwargs)


@register_model
def topformer_base_ds(**kwargs: Any) -> Segmentor:
    """TopFormer-Base with classic deep supervision (CE at the points)."""
    return _create_topformer('base', supervision='ds', **kwargs)


@register_model
def topformer_base_imachsr(**kwargs: Any) -> Segmentor:
    """TopFormer-Base with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_topformer('base', supervision='imachsr', **kwargs)


register_model_alias('topformer_imachsr', 'topformer_base_imachsr')
