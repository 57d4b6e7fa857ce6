"""``Segmentor``: a supervisable backbone, a decoder and an optional iMacHSR head set."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import SupervisableBackbone
from .imachsr import HeadSet, IMacHSRLoss, SupervisionCfg


@dataclass
class SegmentorOutput:
    """What a segmentor with a head set returns in training.

    ``logits``: ``(N, num_classes, H, W)`` at the input's size; ``aux``: point name -> adapter
    logits at that point's resolution; ``features``: point name -> the backbone tensor there;
    ``padded_size``: the size the backbone saw (the input padded to ``pad_multiple``).
    """
    logits: Tensor
    aux: dict[str, Tensor]
    features: dict[str, Tensor]
    padded_size: tuple[int, int]


class Segmentor(nn.Module):
    """backbone -> decoder -> logits, plus one ``DimensionAdapter`` per supervised point.

    In eval mode, or without a head set, ``forward`` returns logits at the input's size for any
    H, W (the input is padded internally and the logits cropped back). In training with a head
    set it returns a ``SegmentorOutput``; ``forward(x, aux=True)`` does so in eval mode too (the
    adapters as early exits). ``deploy()`` drops the head set for inference.

    The decoder maps the backbone's ``forward_features`` list to logits at any stride and keeps
    its final layer as ``decoder.classifier``.
    """

    def __init__(self, backbone: SupervisableBackbone, decoder: nn.Module, num_classes: int,
                 heads: Optional[HeadSet] = None, supervision: Optional[SupervisionCfg] = None,
                 pretrained_cfg: Optional[dict[str, Any]] = None):
        super().__init__()
        if (heads is None) != (supervision is None):
            raise ValueError('a head set and its supervision config come together')
        self.backbone = backbone
        self.decoder = decoder
        self.heads = heads
        self.num_classes = num_classes
        self.supervision = supervision
        self.pretrained_cfg = dict(pretrained_cfg or {})
        self.deployed = False

    def forward(self, x: Tensor, aux: Optional[bool] = None):
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check_input(x)
        height, width = x.shape[-2:]
        multiple = self.backbone.pad_multiple
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple))
        if aux and self.heads is None:
            raise ValueError('aux=True asks for the head set, and this model has none (baseline or deployed)')
        supervise = self.heads is not None and (self.training if aux is None else aux)
        features, taps = self.backbone(x, self.heads.points if supervise else ())
        logits = self.decoder(features)
        logits = F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)
        logits = logits[..., :height, :width]
        if not supervise:
            return logits
        return SegmentorOutput(logits, self.heads(taps), taps, (x.shape[-2], x.shape[-1]))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f'input must be a torch.Tensor, got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError(f'input must be a float tensor (normalised image), got dtype {x.dtype}')
        if x.shape[1] != self.backbone.in_chans:
            raise ValueError(f'input has {x.shape[1]} channels, the model expects '
                             f'{self.backbone.in_chans} (shape {tuple(x.shape)})')
        if not torch.isfinite(x).all():
            raise ValueError('input contains NaN or inf values')

    def criterion(self, **kwargs) -> IMacHSRLoss:
        """The training objective of this model's supervision (``kwargs`` go to ``IMacHSRLoss``)."""
        if self.supervision is None:
            return IMacHSRLoss(**kwargs)
        return IMacHSRLoss.from_cfg(self.supervision, **kwargs)

    def deploy(self) -> 'Segmentor':
        """Remove the head set in place: the model becomes exactly its baseline architecture."""
        self.heads = None
        self.supervision = None
        self.deployed = True
        return self

    def save_pretrained(self, directory, **kwargs) -> Path:
        """Write a Hub-format weight folder (see ``zoo.hub.save_pretrained``)."""
        from .hub import save_pretrained
        return save_pretrained(self, directory, **kwargs)
