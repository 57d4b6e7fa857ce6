"""iMacHSR: dimension adapters at transition points, and the heterogeneous objective.

    L = CE(o, y) + sum_k [ alpha_k * L_MI(g_k(F_k), y) + beta_k * R_NE(g_k(F_k)) ]

``F_k`` is the backbone's tensor at point k and ``g_k`` its ``DimensionAdapter``. Labels are
brought to each point's resolution by area-pooling their one-hot map (``pool_labels``); the
adapters' logits are never upsampled, so a point costs in proportion to its own resolution.
Classic deep supervision (``_ds`` models) is the same class with ``point_loss='ce'``.
"""
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import TransitionPoint
from .layers import SafeBatchNorm2d

PointLoss = Literal['mi', 'ce']
Weight = Union[float, Mapping[str, float]]


class DimensionAdapter(nn.Sequential):
    """``g_k``: maps a point's ``in_chs`` channels to ``num_classes`` logits at its resolution.

    1x1 conv - BN - ReLU - 1x1 conv; ``hidden_chs`` defaults to ``in_chs``. The BN copes with a
    1x1 point map in a batch of one (see ``SafeBatchNorm2d``).
    """

    def __init__(self, in_chs: int, num_classes: int, hidden_chs: Optional[int] = None):
        hidden_chs = hidden_chs or in_chs
        super().__init__(
            nn.Conv2d(in_chs, hidden_chs, 1, bias=False),
            SafeBatchNorm2d(hidden_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_chs, num_classes, 1),
        )

    @property
    def classifier(self) -> nn.Conv2d:
        return self[-1]


def _adapter_key(point_name: str) -> str:
    return point_name.replace('.', '_')  # module names cannot hold dots


class HeadSet(nn.Module):
    """One ``DimensionAdapter`` per selected point; ``forward`` maps point tensors to logits."""

    def __init__(self, points: Sequence[TransitionPoint], num_classes: int,
                 hidden_chs: Optional[int] = None):
        super().__init__()
        self.points = [p['name'] for p in points]
        keys = [_adapter_key(name) for name in self.points]
        if len(set(keys)) != len(keys):
            raise ValueError(f'points {self.points} collide once dots become underscores')
        self.adapters = nn.ModuleDict({
            key: DimensionAdapter(p['num_chs'], num_classes, hidden_chs) for key, p in zip(keys, points)})

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.adapters[_adapter_key(name)](features[name]) for name in self.points}


def pool_labels(target: Tensor, size: Sequence[int], num_classes: int, ignore_index: int = 255) -> Tensor:
    """Per-cell class counts of a label map on an ``h x w`` grid: ``(N, C, h, w)`` floats.

    Pixel (y, x) of the ``H x W`` map falls in cell (floor(y h / H), floor(x w / W)), which for
    H = r h is exact r x r area pooling. Ignored pixels count nowhere: a cell's total is its
    number of valid pixels, and counts / total is its area-pooled one-hot label.
    """
    if target.dim() != 3:
        raise ValueError(f'target must be (N, H, W), got shape {tuple(target.shape)}')
    target = target.long()
    valid = target != ignore_index
    invalid = valid & ((target < 0) | (target >= num_classes))
    if invalid.any():
        values = torch.unique(target[invalid]).tolist()[:8]
        raise ValueError(f'target holds values {values} outside 0..{num_classes - 1} that are not '
                         f'the ignore index {ignore_index}')
    n, height, width = target.shape
    h, w = int(size[0]), int(size[1])
    rows = torch.arange(height, device=target.device) * h // height
    cols = torch.arange(width, device=target.device) * w // width
    cell = rows[:, None] * w + cols[None, :]
    index = torch.where(valid, target, 0) * (h * w) + cell
    counts = torch.zeros(n, num_classes * h * w, device=target.device)
    counts.scatter_add_(1, index.flatten(1), valid.flatten(1).float())
    return counts.view(n, num_classes, h, w)


def _valid_counts(target: Tensor, size: Sequence[int], ignore_index: int) -> Tensor:
    """Valid pixels per cell, ``(N, h, w)``."""
    binary = torch.where(target == ignore_index, ignore_index, 0)
    return pool_labels(binary, size, 1, ignore_index)[:, 0]


def _mutual_information_from_counts(logits: Tensor, counts: Tensor, eps: float) -> Tensor:
    """``-mean_n I_n / log C`` over the images that have valid pixels."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(1).flatten(2)               # (N, A, L)
    counts = counts.flatten(2)                                 # (N, B, L)
    total = counts.sum((1, 2))
    joint = torch.bmm(probs, counts.transpose(1, 2)) / total.clamp_min(1)[:, None, None]
    p_a, p_b = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    info = (joint * ((joint + eps).log() - (p_a + eps).log() - (p_b + eps).log())).sum((1, 2))
    has_labels = total > 0
    if not has_labels.any():
        return logits.sum() * 0.0  # keeps the graph: a batch with nothing labelled adds nothing
    return -info[has_labels].mean() / math.log(num_classes)


def _negative_entropy_from_weights(logits: Tensor, weight: Optional[Tensor]) -> Tensor:
    log_probs = F.log_softmax(logits.float(), 1)
    negent = (log_probs.exp() * log_probs).sum(1) / math.log(logits.shape[1])  # (N, h, w)
    if weight is None:
        return negent.mean()
    return (negent * weight).sum() / weight.sum().clamp_min(1)


def _point_cross_entropy_from_counts(logits: Tensor, counts: Tensor) -> Tensor:
    log_probs = F.log_softmax(logits.float(), 1)
    return -(counts * log_probs).sum() / counts.sum().clamp_min(1)


def mutual_information_loss(logits: Tensor, target: Tensor, ignore_index: int = 255,
                            eps: float = 1e-8) -> Tensor:
    """Image-wise mutual information between predicted and true class, negated and normalised.

    For image n, with ``p_i`` the softmax of ``logits`` at cell i and ``q_i`` its area-pooled
    label (weight ``w_i`` = valid pixels in the cell; ``target`` may be larger than ``logits``):

        P(a, b) = sum_i w_i p_i(a) q_i(b) / sum_i w_i
        I_n = sum_ab P(a, b) [log P(a, b) - log P(a) - log P(b)]
        L_MI = -mean_n I_n / log C, in [-1, 0]

    Images without valid pixels are left out. ``L_MI`` does not change when the logits' classes
    are permuted: it asks the adapter to be informative about the label, not to predict it.
    """
    counts = pool_labels(target, logits.shape[-2:], logits.shape[1], ignore_index)
    return _mutual_information_from_counts(logits, counts, eps)


def negative_entropy(logits: Tensor, target: Optional[Tensor] = None, ignore_index: int = 255) -> Tensor:
    """Mean normalised negative entropy of the softmax over channels, in [-1, 0].

        R_NE = sum_i w_i sum_a p_i(a) log p_i(a) / (log C sum_i w_i)

    ``w_i`` is the number of valid pixels of ``target`` in cell i (all cells weigh 1 without a
    target). Minimising it discourages over-confident hidden predictions.
    """
    weight = None if target is None else _valid_counts(target, logits.shape[-2:], ignore_index)
    return _negative_entropy_from_weights(logits, weight)


@dataclass
class SupervisionCfg:
    """What a model's head set is trained with; stored with the model and in its weights."""
    kind: Literal['imachsr', 'ds']
    points: list[str]
    alpha: dict[str, float]
    beta: dict[str, float] = field(default_factory=dict)
    ne_on: Literal['logits', 'features'] = 'logits'


def supervision_cfg(kind: str, points: Sequence[str], alpha: Optional[Weight] = None,
                    beta: Optional[Weight] = None, ne_on: str = 'logits') -> SupervisionCfg:
    """Per-point weights with the defaults: iMacHSR alpha 0.4, beta 0.1; deep supervision 0.4.

    alpha and beta were chosen on CamVid val (TopFormer-Tiny, README: Results): of alpha in
    {0.2, 0.4, 1.0} and beta in {0, 0.02, 0.1}, (0.4, 0.1) scored best, within one seed's noise.
    Adapters start near uniform, where both terms are flat; around it alpha L_MI + beta R_NE
    curves like (beta - alpha r) |delta|^2, with r the share of the adapter's deviation that the
    label explains, so an adapter leaves uniform once r > beta / alpha.
    """
    if kind not in ('imachsr', 'ds'):
        raise ValueError(f"supervision must be 'imachsr' or 'ds', got {kind!r}")
    if ne_on not in ('logits', 'features'):
        raise ValueError(f"ne_on must be 'logits' or 'features', got {ne_on!r}")
    if kind == 'ds' and beta:
        raise ValueError('classic deep supervision (_ds) has no negative-entropy term: beta must be 0')
    return SupervisionCfg(
        kind=kind, points=list(points), alpha=_per_point('alpha', alpha, 0.4, points),
        beta=_per_point('beta', beta, 0.1 if kind == 'imachsr' else 0.0, points), ne_on=ne_on)


def _per_point(what: str, value: Optional[Weight], default: float, points: Sequence[str]) -> dict[str, float]:
    if value is None:
        value = default
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(points))
        if unknown:
            raise ValueError(f'{what} names points {unknown} that are not supervised; points: {list(points)}')
        return {p: float(value.get(p, default)) for p in points}
    return {p: float(value) for p in points}


class IMacHSRLoss(nn.Module):
    """The training objective of a segmentor, with every term reported by name.

    ``point_loss='mi'`` (iMacHSR):   L = CE(o, y) + sum_k alpha_k L_MI_k + beta_k R_NE_k
    ``point_loss='ce'`` (classic DS): L = CE(o, y) + sum_k alpha_k CE(g_k(F_k), pooled y)

    ``forward(output, target)`` takes what the segmentor returned (a ``SegmentorOutput`` in
    training, or plain logits) and the ``(N, H, W)`` label map. It returns ``loss_ce``,
    ``<point>.loss_mi`` and ``<point>.loss_ne`` (or ``<point>.loss_ce``), all unweighted, and
    ``loss``, the weighted sum to minimise.
    """

    def __init__(self, alpha: Weight = 0.4, beta: Weight = 0.1, point_loss: PointLoss = 'mi',
                 ne_on: Literal['logits', 'features'] = 'logits', ignore_index: int = 255,
                 class_weight: Optional[Tensor] = None, eps: float = 1e-8):
        super().__init__()
        if point_loss not in ('mi', 'ce'):
            raise ValueError(f"point_loss must be 'mi' or 'ce', got {point_loss!r}")
        if ne_on not in ('logits', 'features'):
            raise ValueError(f"ne_on must be 'logits' or 'features', got {ne_on!r}")
        self.alpha, self.beta = alpha, beta
        self.point_loss, self.ne_on = point_loss, ne_on
        self.ignore_index, self.eps = ignore_index, eps
        self.register_buffer('class_weight', class_weight, persistent=False)

    @classmethod
    def from_cfg(cls, cfg: SupervisionCfg, **kwargs) -> 'IMacHSRLoss':
        return cls(alpha=cfg.alpha, beta=cfg.beta, point_loss='mi' if cfg.kind == 'imachsr' else 'ce',
                   ne_on=cfg.ne_on, **kwargs)

    def _weight(self, weight: Weight, point: str) -> float:
        if isinstance(weight, Mapping):
            if point not in weight:
                raise KeyError(f'no loss weight for point {point!r}; weights are set for {sorted(weight)}')
            return weight[point]
        return weight

    def forward(self, output, target: Tensor) -> dict[str, Tensor]:
        logits = output if isinstance(output, Tensor) else output.logits
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f'target of shape {tuple(target.shape)} does not match logits '
                             f'{tuple(logits.shape)}: expected (N, H, W) = '
                             f'{tuple(logits.shape[:1] + logits.shape[2:])}')
        target = target.long()
        terms = {'loss_ce': F.cross_entropy(logits.float(), target, weight=self.class_weight,
                                            ignore_index=self.ignore_index)}
        loss = terms['loss_ce']
        aux = {} if isinstance(output, Tensor) else output.aux
        if aux:
            # The adapters saw the padded input: pad the labels alike, so cells align exactly.
            pad_h, pad_w = output.padded_size[0] - target.shape[1], output.padded_size[1] - target.shape[2]
            padded = F.pad(target, (0, pad_w, 0, pad_h), value=self.ignore_index)
            num_classes = logits.shape[1]
            counts_at: dict[tuple[int, int], Tensor] = {}
            for point, point_logits in aux.items():
                size = tuple(point_logits.shape[-2:])
                if size not in counts_at:
                    counts_at[size] = pool_labels(padded, size, num_classes, self.ignore_index)
                counts = counts_at[size]
                alpha = self._weight(self.alpha, point)
                if self.point_loss == 'ce':
                    terms[f'{point}.loss_ce'] = _point_cross_entropy_from_counts(point_logits, counts)
                    loss = loss + alpha * terms[f'{point}.loss_ce']
                    continue
                terms[f'{point}.loss_mi'] = _mutual_information_from_counts(point_logits, counts, self.eps)
                ne_input = output.features[point] if self.ne_on == 'features' else point_logits
                terms[f'{point}.loss_ne'] = _negative_entropy_from_weights(ne_input, counts.sum(1))
                loss = loss + alpha * terms[f'{point}.loss_mi'] + self._weight(self.beta, point) * terms[f'{point}.loss_ne']
        terms['loss'] = loss
        return terms
