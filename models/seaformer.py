"""SeaFormer (Wan et al., ICLR 2023, arXiv 2301.13156): squeeze-enhanced axial transformer.

Built from the official configs (fudan-zvg/SeaFormer, ``seaformer-seg/local_configs``):

* a shared MobileNetV2 stem of five stages down to 1/64;
* the context branch: stacks of SEA blocks on the 1/32 and 1/64 tokens (large: also 1/16);
* the spatial branch: fusion blocks that gate the 1/8 feature with each context output;
* the light segmentation head: a 1x1 depthwise conv-BN-ReLU and the 1x1 classifier.

The official code keeps the fusion blocks inside its ``LightHead`` class; the paper draws them
as the spatial branch of the network, and here they belong to the backbone, so that the fused
features are transition points that can be supervised. The computation and the parameters are
the same: the decoder is the two-layer head of the paper.

Every BatchNorm of the backbone is a ``SafeBatchNorm2d`` (running statistics for a training
batch with one value per channel), so that a batch of one trains on any input size. In SeaFormer
a batch of one meets such a batch whenever the padded input is 64 px high or wide: the 1/64
tokens then have one row (or column), so the row (column) branch of every SEA block there, an
H x 1 (1 x W) map, is a single token; at 64 x 64 the whole 1/64 map is one pixel.
"""
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._builder import Supervision, build_segmentor, check_num_classes, load_backbone_checkpoint
from zoo._pretrained import camvid_cfg
from zoo._registry import register_model, register_model_alias
from zoo.backbone import PointSpec, SupervisableBackbone, transition_point
from zoo.segmentor import Segmentor

from zoo.layers import SafeBatchNorm2d

from ._layers import ConvBN, InvertedResidual, TransformerBlock

BlockCfg = tuple[int, int, int, int]  # kernel size, expansion ratio, out channels, stride


class SqueezeAxialPosEmbed(nn.Module):
    """Learned positional embedding of a squeezed axis: ``x + interp_linear(pos, N)``.

    ``pos`` has ``length`` (16) positions and is linearly resampled to the axis's ``N`` tokens,
    so any input size works.
    """

    def __init__(self, dim: int, length: int = 16):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, dim, length))

    def forward(self, x: Tensor) -> Tensor:
        return x + F.interpolate(self.pos_embed, size=x.shape[-1], mode='linear', align_corners=False)


class SeaAttention(nn.Module):
    """Squeeze-enhanced axial attention.

    With ``q, k, v`` from 1x1 conv-BNs (``num_heads`` heads of ``key_dim`` for q, k and of
    ``attn_ratio * key_dim`` for v):

        row  = Attn(mean_W q + p_q^r, mean_W k + p_k^r, mean_W v)     (H tokens)
        col  = Attn(mean_H q + p_q^c, mean_H k + p_k^c, mean_H v)     (W tokens)
        ctx  = proj(v + enc_r(row) broadcast over W + enc_c(col) broadcast over H)
        out  = hsigmoid(ctx) * pw(act(dw3x3([q, k, v])))               (detail enhancement)

    ``Attn(q, k, v) = softmax(q k^T / sqrt(key_dim)) v`` per head. The attention itself costs
    O((H^2 + W^2) C) instead of full attention's O((HW)^2 C).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float = 2,
                 act_layer: Type[nn.Module] = nn.ReLU6):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        qk_chs = key_dim * num_heads
        self.v_chs = v_chs = int(attn_ratio * key_dim) * num_heads
        self.to_q = ConvBN(dim, qk_chs)
        self.to_k = ConvBN(dim, qk_chs)
        self.to_v = ConvBN(dim, v_chs)
        # Zero-initialised BNs, as in the official model: the gate starts at hsigmoid(0) = 1/2
        # everywhere, and the context path learns once proj's BN weight has left 0.
        self.proj = nn.Sequential(act_layer(), ConvBN(v_chs, dim, bn_weight_init=0))
        self.proj_encode_row = nn.Sequential(act_layer(), ConvBN(v_chs, v_chs, bn_weight_init=0))
        self.pos_emb_rowq = SqueezeAxialPosEmbed(qk_chs)
        self.pos_emb_rowk = SqueezeAxialPosEmbed(qk_chs)
        self.proj_encode_column = nn.Sequential(act_layer(), ConvBN(v_chs, v_chs, bn_weight_init=0))
        self.pos_emb_columnq = SqueezeAxialPosEmbed(qk_chs)
        self.pos_emb_columnk = SqueezeAxialPosEmbed(qk_chs)
        qkv_chs = 2 * qk_chs + v_chs
        self.dwconv = ConvBN(qkv_chs, qkv_chs, 3, groups=qkv_chs)
        self.act = act_layer()
        self.pwconv = ConvBN(qkv_chs, dim)
        self.sigmoid = nn.Hardsigmoid()

    def _axial(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Multi-head attention among the N tokens of a squeezed axis: (B, C, N) -> (B, C_v, N)."""
        batch, _, length = q.shape
        q = q.reshape(batch, self.num_heads, -1, length).transpose(-2, -1)
        k = k.reshape(batch, self.num_heads, -1, length)
        v = v.reshape(batch, self.num_heads, -1, length).transpose(-2, -1)
        attn = (q @ k * self.scale).softmax(-1)
        return (attn @ v).transpose(-2, -1).reshape(batch, self.v_chs, length)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.act(self.dwconv(torch.cat([q, k, v], 1))))
        row = self._axial(self.pos_emb_rowq(q.mean(-1)), self.pos_emb_rowk(k.mean(-1)), v.mean(-1))
        col = self._axial(self.pos_emb_columnq(q.mean(-2)), self.pos_emb_columnk(k.mean(-2)), v.mean(-2))
        context = v + self.proj_encode_row(row.unsqueeze(-1)) + self.proj_encode_column(col.unsqueeze(-2))
        return self.sigmoid(self.proj(context)) * detail


class FusionBlock(nn.Module):
    """Injects context into detail: ``BN(W_l x_l) * hsigmoid(up(BN(W_g x_g)))``.

    ``x_l`` is the 1/8 detail feature (or the previous fusion), ``x_g`` a context-branch output,
    whose gate is bilinearly upsampled to ``x_l``'s size.
    """

    def __init__(self, local_chs: int, global_chs: int, out_chs: int):
        super().__init__()
        self.local_embedding = ConvBN(local_chs, out_chs)
        self.global_act = ConvBN(global_chs, out_chs)
        self.act = nn.Hardsigmoid()

    def forward(self, x_local: Tensor, x_global: Tensor) -> Tensor:
        gate = F.interpolate(self.act(self.global_act(x_global)), size=x_local.shape[-2:],
                             mode='bilinear', align_corners=False)
        return self.local_embedding(x_local) * gate


class SeaFormerBackbone(SupervisableBackbone):
    """MobileNetV2 stem to 1/64, SEA-block context branch, fusion into the 1/8 detail feature.

    ``stages[i]`` lists ``(kernel, expansion, channels, stride)`` blocks (the official ``cfg``);
    the last ``len(depths)`` stages are each followed by ``depths[j]`` SEA blocks, and fusion
    block j gates the 1/8 feature (stage 2's output, then fusion j-1's) with context output j.
    ``forward_features`` returns ``[last fusion]``. ``local_stage`` indexes the stage whose output
    is the detail feature (official: 1, the 1/8 one).

    Transition points, in forward order: ``stem``; per stage ``down<i>`` (its stride-2 block,
    when the stage has more blocks) and ``stage<i>`` (its end; the tokens that enter attention are
    stage ends, not pooled, so they are no ``bottleneck``); ``attn.<n>`` (each SEA block, counted
    across context stages); ``fuse.<j>`` (each fusion block).

    ``auto_points = 'stage1,stage2,stage3'``: the paper's ablation favours a few (2-3) points
    close to the input. The stem has seen one convolution, so the choice starts at the first
    stage end (1/4) and takes the next two (1/8, 1/16): whole MobileNetV2 stages at three
    different scales, all in the stem both branches share (1/8 is the detail branch's input).
    """
    auto_points = 'stage1,stage2,stage3'

    def __init__(self, stages: Sequence[Sequence[BlockCfg]], stem_chs: int, depths: Sequence[int],
                 key_dims: Sequence[int], num_heads: int, fusion_dims: Sequence[int],
                 mlp_ratios: Sequence[float] = (2, 4), attn_ratio: float = 2,
                 drop_path_rate: float = 0.1, in_chans: int = 3, local_stage: int = 1):
        super().__init__()
        if not len(depths) == len(key_dims) == len(mlp_ratios) == len(fusion_dims):
            raise ValueError('depths, key_dims, mlp_ratios and fusion_dims need one entry per context stage')
        self.in_chans = in_chans
        self.local_stage = local_stage
        self.first_context_stage = len(stages) - len(depths)
        self.stem = ConvBN(in_chans, stem_chs, 3, 2, act_layer=nn.ReLU)
        points = [transition_point('stem', 'stem', stem_chs, 2, 'downsample')]
        chs, reduction, attn_index = stem_chs, 2, 0
        stage_outs, self.stages, self.trans = [], nn.ModuleList(), nn.ModuleList()  # (channels, reduction)
        for i, blocks in enumerate(stages):
            layers = []
            for j, (kernel, ratio, out_chs, stride) in enumerate(blocks):
                layers.append(InvertedResidual(chs, out_chs, kernel, stride, ratio, nn.ReLU))
                chs, reduction = out_chs, reduction * stride
                if stride > 1 and j < len(blocks) - 1:
                    points.append(transition_point(f'down{i + 1}', f'stages.{i}.{j}', chs, reduction, 'downsample'))
            self.stages.append(nn.Sequential(*layers))
            points.append(transition_point(f'stage{i + 1}', f'stages.{i}', chs, reduction, 'stage'))
            stage_outs.append((chs, reduction))
            t = i - self.first_context_stage
            if t < 0:
                continue
            # Stochastic depth grows linearly inside each context stage, as in the official code.
            rates = torch.linspace(0, drop_path_rate, depths[t]).tolist()
            self.trans.append(nn.Sequential(*[
                TransformerBlock(SeaAttention(chs, key_dims[t], num_heads, attn_ratio), chs, mlp_ratios[t],
                                 nn.ReLU6, rate) for rate in rates]))
            for b in range(depths[t]):
                points.append(transition_point(f'attn.{attn_index}', f'trans.{t}.{b}', chs, reduction, 'attention'))
                attn_index += 1
        local_chs, local_reduction = stage_outs[local_stage]
        self.fuse = nn.ModuleList()
        for t, out_chs in enumerate(fusion_dims):
            self.fuse.append(FusionBlock(local_chs, stage_outs[self.first_context_stage + t][0], out_chs))
            points.append(transition_point(f'fuse.{t}', f'fuse.{t}', out_chs, local_reduction, 'fusion'))
            local_chs = out_chs
        self.feature_info = points
        self.out_points = (points[-1]['name'],)
        SafeBatchNorm2d.convert(self)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        context = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.local_stage:
                local = x
            if i >= self.first_context_stage:
                x = self.trans[i - self.first_context_stage](x)
                context.append(x)
        for fuse, x_global in zip(self.fuse, context):
            local = fuse(local, x_global)
        return [local]


_KEY_RULES = (  # official name (classification and mmseg backbones) -> this module's
    (re.compile(r'^smb1\.stem_block\.0\.'), lambda m: 'stem.'),
    (re.compile(r'^smb(\d+)\.layer(\d+)\.conv\.(\d+)\.'),
     # official conv lists interleave activations: [pw, act, dw, act, pw] -> [pw, dw, pw]
     lambda m: f'stages.{int(m[1]) - 1}.{int(m[2]) - 1}.conv.{int(m[3]) // 2}.'),
    (re.compile(r'^trans(\d+)\.transformer_blocks\.(\d+)\.'), lambda m: f'trans.{int(m[1]) - 1}.{m[2]}.'),
    (re.compile(r'\.c\.'), '.0.'),  # Conv2d_BN's (c, bn) -> ConvBN's (0, 1)
    (re.compile(r'\.bn\.'), '.1.'),
)


def official_to_zoo_key(key: str) -> str:
    """``smb2.layer1.conv.4.bn.weight`` -> ``stages.1.0.conv.2.1.weight`` and the like."""
    for pattern, replace in _KEY_RULES:
        key = pattern.sub(replace, key)
    return key


class LightHead(nn.Module):
    """The light segmentation head: 1x1 depthwise conv-BN-ReLU, dropout, 1x1 classifier.

    Takes the backbone's ``[fused 1/8 feature]`` and returns logits at 1/8.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.1):
        super().__init__()
        chs = in_channels[-1]
        self.linear_fuse = ConvBN(chs, chs, groups=chs, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(chs, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.linear_fuse(features[-1])))


_SIZES: dict[str, dict[str, Any]] = {  # official seaformer-seg/local_configs/seaformer/seaformer_<size>.py
    'tiny': dict(
        stem_chs=16,
        stages=[[(3, 1, 16, 1), (3, 4, 16, 2), (3, 3, 16, 1)], [(5, 3, 32, 2), (5, 3, 32, 1)],
                [(3, 3, 64, 2), (3, 3, 64, 1)], [(5, 3, 128, 2)], [(3, 6, 160, 2)]],
        depths=(2, 2), key_dims=(16, 24), num_heads=4, fusion_dims=(64, 96)),
    'small': dict(
        stem_chs=16,
        stages=[[(3, 1, 16, 1), (3, 4, 24, 2), (3, 3, 24, 1)], [(5, 3, 48, 2), (5, 3, 48, 1)],
                [(3, 3, 96, 2), (3, 3, 96, 1)], [(5, 4, 160, 2)], [(3, 6, 192, 2)]],
        depths=(3, 3), key_dims=(16, 24), num_heads=6, fusion_dims=(96, 128)),
    'base': dict(
        stem_chs=16,
        stages=[[(3, 1, 16, 1), (3, 4, 32, 2), (3, 3, 32, 1)], [(5, 3, 64, 2), (5, 3, 64, 1)],
                [(3, 3, 128, 2), (3, 3, 128, 1)], [(5, 4, 192, 2)], [(3, 6, 256, 2)]],
        depths=(4, 4), key_dims=(16, 24), num_heads=8, fusion_dims=(128, 160)),
    'large': dict(
        stem_chs=32,
        stages=[[(3, 3, 32, 1), (3, 4, 64, 2), (3, 4, 64, 1)], [(5, 4, 128, 2), (5, 4, 128, 1)],
                [(3, 4, 192, 2), (3, 4, 192, 1)], [(5, 4, 256, 2)], [(3, 6, 320, 2)]],
        depths=(3, 3, 3), key_dims=(16, 20, 24), num_heads=8, mlp_ratios=(2, 4, 6),
        fusion_dims=(128, 160, 192)),
}


def _create_seaformer(size: str, supervision: Supervision = None, num_classes: int = 150,
                      points: PointSpec = None, alpha=None, beta=None, ne_on: str = 'logits',
                      adapter_chs: Optional[int] = None, in_chans: int = 3,
                      pretrained_backbone: Optional[Union[str, Path]] = None, **kwargs: Any) -> Segmentor:
    """``kwargs`` override the size's backbone config (e.g. ``drop_path_rate``)."""
    check_num_classes(num_classes)
    backbone = SeaFormerBackbone(**{**_SIZES[size], **kwargs}, in_chans=in_chans)
    if pretrained_backbone is not None:
        load_backbone_checkpoint(backbone, pretrained_backbone, official_to_zoo_key, segmentation_only=('fuse.',))
    decoder = LightHead(backbone.out_channels, num_classes)
    return build_segmentor(backbone, decoder, num_classes, supervision, points, alpha, beta, ne_on, adapter_chs)


# Trained on CamVid train by references/camvid/experiments.py (README: Results), best of its seeds;
# metrics from zoo eval on CamVid val. Files in weights/, sha256-checked.
default_cfgs = [
    camvid_cfg('seaformer_tiny', '499099ac69251834164f8a2f9dc455a1b9d05cbd99b5548d19df8aeecb42b29d',
               {'aAcc': 73.3986, 'mIoU': 29.6382, 'mF1': 35.6584, 'mPrecision': 66.1769, 'mRecall': 41.6376}),
    camvid_cfg('seaformer_tiny_ds', '7c91cf72596490434a4a992c6a62ed72a110efdad5dd577288364a05addf2c41',
               {'aAcc': 77.8318, 'mIoU': 32.5019, 'mF1': 38.9768, 'mPrecision': 69.9972, 'mRecall': 44.0049}),
    camvid_cfg('seaformer_tiny_imachsr', '8b5e32e41da7c29f4743cafcead3ca708d3ade72047d5e70474418cd036942b5',
               {'aAcc': 74.7531, 'mIoU': 30.6081, 'mF1': 36.8608, 'mPrecision': 65.3365, 'mRecall': 41.5296}),
    camvid_cfg('seaformer_base', '5532e707c08cbdc8e1d5fe1adc642655fc5adb3eb4c03726d21bd6cf9a237ec3',
               {'aAcc': 74.8606, 'mIoU': 29.4368, 'mF1': 35.1782, 'mPrecision': 63.1048, 'mRecall': 40.3735}),
    camvid_cfg('seaformer_base_ds', 'ba9a01277ba3a6b5ae345d7ddf5358d548ef481a89ff5ef7462a3a027b197b9c',
               {'aAcc': 75.3713, 'mIoU': 29.9314, 'mF1': 35.6563, 'mPrecision': 64.4324, 'mRecall': 41.3945}),
    camvid_cfg('seaformer_base_imachsr', 'a2a05018cc26b620402b8efee4c0df1bde484cd4d00fae66c6fb7d5da052fab7',
               {'aAcc': 73.6363, 'mIoU': 28.716, 'mF1': 34.5292, 'mPrecision': 61.8471, 'mRecall': 40.1958}),
]


@register_model
def seaformer_tiny(**kwargs: Any) -> Segmentor:
    """SeaFormer-Tiny (1.7 M parameters at 150 classes)."""
    return _create_seaformer('tiny', **kwargs)


@register_model
def seaformer_tiny_ds(**kwargs: Any) -> Segmentor:
    """SeaFormer-Tiny with classic deep supervision (CE at the points)."""
    return _create_seaformer('tiny', supervision='ds', **kwargs)


@register_model
def seaformer_tiny_imachsr(**kwargs: Any) -> Segmentor:
    """SeaFormer-Tiny with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_seaformer('tiny', supervision='imachsr', **kwargs)


@register_model
def seaformer_small(**kwargs: Any) -> Segmentor:
    """SeaFormer-Small (4.0 M parameters at 150 classes)."""
    return _create_seaformer('small', **kwargs)


@register_model
def seaformer_small_ds(**kwargs: Any) -> Segmentor:
    """SeaFormer-Small with classic deep supervision (CE at the points)."""
    return _create_seaformer('small', supervision='ds', **kwargs)


@register_model
def seaformer_small_imachsr(**kwargs: Any) -> Segmentor:
    """SeaFormer-Small with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_seaformer('small', supervision='imachsr', **kwargs)


@register_model
def seaformer_base(**kwargs: Any) -> Segmentor:
    """SeaFormer-Base (8.6 M parameters at 150 classes)."""
    return _create_seaformer('base', **kwargs)


@register_model
def seaformer_base_ds(**kwargs: Any) -> Segmentor:
    """SeaFormer-Base with classic deep supervision (CE at the points)."""
    return _create_seaformer('base', supervision='ds', **kwargs)


@register_model
def seaformer_base_imachsr(**kwargs: Any) -> Segmentor:
    """SeaFormer-Base with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_seaformer('base', supervision='imachsr', **kwargs)


@register_model
def seaformer_large(**kwargs: Any) -> Segmentor:
    """SeaFormer-Large (14.0 M parameters at 150 classes)."""
    return _create_seaformer('large', **kwargs)


@register_model
def seaformer_large_ds(**kwargs: Any) -> Segmentor:
    """SeaFormer-Large with classic deep supervision (CE at the points)."""
    return _create_seaformer('large', supervision='ds', **kwargs)


@register_model
def seaformer_large_imachsr(**kwargs: Any) -> Segmentor:
    """SeaFormer-Large with the iMacHSR head set (MI + negative entropy at the points)."""
    return _create_seaformer('large', supervision='imachsr', **kwargs)


register_model_alias('seaformer_imachsr', 'seaformer_base_imachsr')
