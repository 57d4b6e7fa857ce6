"""Inference for evaluation: whole image or sliding window, flip and multi-scale test-time
augmentation, and the confusion matrices of one or more models (and of their adapter heads).

Probabilities are averaged as mmsegmentation does: for each scale and flip, the logits are
resized to the image, turned into a softmax, flipped back and summed.
"""
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import ConfusionMatrix, relabel_by_majority, scores

OUTPUT = 'output'  # the model's own prediction, beside its adapters' names


@dataclass
class InferenceCfg:
    """``mode='slide'`` runs ``crop_size`` windows every ``stride`` pixels (default: two thirds of
    the crop) and averages the overlaps; ``flip`` adds the mirrored image; ``scales`` resizes the
    image by each factor first."""
    mode: Literal['whole', 'slide'] = 'whole'
    crop_size: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    flip: bool = False
    scales: tuple[float, ...] = field(default=(1.0,))

    def __post_init__(self) -> None:
        if self.mode not in ('whole', 'slide'):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == 'slide' and self.crop_size is None:
            raise ValueError('sliding-window inference needs a crop size (--crop-size H W)')
        if self.mode == 'slide' and self.stride is None:
            self.stride = (max(1, 2 * self.crop_size[0] // 3), max(1, 2 * self.crop_size[1] // 3))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f'scales must be positive factors, got {self.scales}')


def _forward(model: nn.Module, images: Tensor, heads: bool) -> dict[str, Tensor]:
    """Logits at the images' size: the model's, and with ``heads`` its adapters' too."""
    if not heads:
        return {OUTPUT: model(images)}
    out = model(images, aux=True)
    size = images.shape[-2:]
    adapters = {name: F.interpolate(logits, size=out.padded_size, mode='bilinear', align_corners=False)
                [..., :size[0], :size[1]] for name, logits in out.aux.items()}
    return {OUTPUT: out.logits, **adapters}


def _slide(model: nn.Module, images: Tensor, cfg: InferenceCfg, heads: bool) -> dict[str, Tensor]:
    """mmseg's slide inference: windows on a grid covering the image, overlaps averaged."""
    (crop_h, crop_w), (stride_h, stride_w) = cfg.crop_size, cfg.stride
    height, width = images.shape[-2:]
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    sums: dict[str, Tensor] = {}
    count = images.new_zeros(1, 1, height, width)
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            for name, logits in _forward(model, images[..., y1:y2, x1:x2], heads).items():
                if name not in sums:
                    sums[name] = images.new_zeros(images.shape[0], logits.shape[1], height, width)
                sums[name][..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
    return {name: total / count for name, total in sums.items()}


@torch.no_grad()
def predict_probs(model: nn.Module, images: Tensor, cfg: InferenceCfg = InferenceCfg(),
                  heads: bool = False) -> dict[str, Tensor]:
    """Softmax probabilities ``(N, C, H, W)`` at the images' size, averaged over ``cfg``'s
    scales and flips: ``'output'`` for the model, and with ``heads`` one entry per adapter."""
    size = images.shape[-2:]
    sums: dict[str, Tensor] = {}
    for scale in cfg.scales:
        scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode='bilinear',
                                                         align_corners=False)
        for flip in (False, True) if cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            outputs = _slide(model, x, cfg, heads) if cfg.mode == 'slide' else _forward(model, x, heads)
            for name, logits in outputs.items():
                probs = F.interpolate(logits.float(), size=size, mode='bilinear', align_corners=False).softmax(1)
                probs = probs.flip(-1) if flip else probs
                sums[name] = sums[name] + probs if name in sums else probs
    views = len(cfg.scales) * (2 if cfg.flip else 1)
    return {name: total / views for name, total in sums.items()}


def collate_list(batch: list) -> tuple[list[Tensor], list[Tensor]]:
    """Keep the images of a batch apart: they may differ in size (batched by size later)."""
    return [image for image, _ in batch], [label for _, label in batch]


def _same_size_groups(images: list[Tensor]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.values())


OnBatch = Callable[[list[Tensor], list[Tensor], dict[str, list[Tensor]]], None]


def evaluate(models: Mapping[str, nn.Module], batches: Iterable, num_classes: int, ignore_index: int = 255,
             cfg: InferenceCfg = InferenceCfg(), device: torch.device = torch.device('cpu'),
             per_head: bool = False, on_batch: Optional[OnBatch] = None,
             progress: Optional[Callable[[Iterable], Iterable]] = None) -> dict[str, dict[str, ConfusionMatrix]]:
    """Confusion matrices of every model on ``batches`` of ``(images, labels)`` lists.

    Returns ``{model: {'output': matrix, <adapter point>: matrix, ...}}``; adapter matrices
    (``per_head``) count the adapter's own classes as predictions, to be relabelled
    (``zoo.metrics.relabel_by_majority``). ``on_batch(images, labels, predictions)`` sees
    every batch, ``predictions`` mapping each model to its label maps (for figures).
    """
    matrices: dict[str, dict[str, ConfusionMatrix]] = {name: {} for name in models}
    for model in models.values():
        model.eval()
    for images, labels in (progress(batches) if progress else batches):
        predictions = {name: [None] * len(images) for name in models}
        for group in _same_size_groups(images):
            x = torch.stack([images[i] for i in group]).to(device)
            target = torch.stack([labels[i] for i in group]).to(device)
            for name, model in models.items():
                heads = per_head and getattr(model, 'heads', None) is not None
                for head, probs in predict_probs(model, x, cfg, heads).items():
                    if head not in matrices[name]:
                        matrices[name][head] = ConfusionMatrix(num_classes, ignore_index, device)
                    pred = probs.argmax(1)
                    matrices[name][head].update(pred, target)
                    if head == OUTPUT:
                        for i, p in zip(group, pred.cpu()):
                            predictions[name][i] = p
        if on_batch is not None:
            on_batch(images, labels, predictions)
    return matrices


HEAD_NOTE = ('adapter heads scored as early exits: an iMacHSR adapter is trained with mutual information, '
             'so its classes are an unknown relabelling of the labels; each adapter class is mapped to its '
             'majority label on this evaluation set (mapping fitted on the data it scores, so optimistic)')


def json_ready(value):
    """``value`` with NaN turned into null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def metrics_report(matrices: Mapping[str, ConfusionMatrix], classes: list[str]) -> dict:
    """The metrics of a model's matrices from ``evaluate``: its output's, and under ``heads`` each
    adapter's after ``relabel_by_majority``, with the mapping used."""
    report = matrices[OUTPUT].compute(classes)
    heads = {}
    for point, matrix in matrices.items():
        if point != OUTPUT:
            merged, mapping = relabel_by_majority(matrix.matrix)
            heads[point] = {**scores(merged, classes),
                            'mapping': {f'adapter class {a}': classes[c] for a, c in enumerate(mapping)}}
    if heads:
        report['heads'] = heads
        report['heads_note'] = HEAD_NOTE
    return report
