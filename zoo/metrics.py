"""Segmentation metrics from one accumulated confusion matrix, as mmsegmentation's ``IoUMetric``.

For class c, with ``M[t, p]`` the number of pixels of true class t predicted as p (pixels of the
ignore index are never counted), ``TP = M[c, c]``, ``FP = sum_t M[t, c] - TP`` and
``FN = sum_p M[c, p] - TP``:

    IoU       = TP / (TP + FP + FN)
    Precision = TP / (TP + FP)
    Recall    = TP / (TP + FN)                (mmseg's per-class Acc)
    F1        = 2 TP / (2 TP + FP + FN)       (Dice; the F-score with beta 1)
    aAcc      = sum_c TP / sum_tp M[t, p]

A ratio whose denominator is 0 is NaN and left out of its mean: IoU and F1 of a class absent
from both prediction and truth, Precision of a class never predicted, Recall of a class absent
from the truth. ``mIoU``, ``mF1``, ``mPrecision``, ``mRecall`` and ``aAcc`` are percentages.
F1 equals mmseg's Fscore wherever that is defined and its Dice everywhere (mmseg's
``2PR / (P + R)`` gives NaN for a class present but never predicted, where F1 is 0).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

METRICS = ('aAcc', 'mIoU', 'mF1', 'mPrecision', 'mRecall')
CLASS_METRICS = ('IoU', 'F1', 'Precision', 'Recall')


class ConfusionMatrix:
    """Accumulates ``matrix[t, p]`` over ``update(pred, target)`` calls; ``compute()`` scores it."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: Optional[torch.device] = None):
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count the pixels of ``pred`` (class indices) against ``target`` (same shape)."""
        if pred.shape != target.shape:
            raise ValueError(f'prediction of shape {tuple(pred.shape)} does not match target {tuple(target.shape)}')
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        for what, values in (('target', target), ('prediction', pred)):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                bad = torch.unique(values[(values < 0) | (values >= self.num_classes)]).tolist()[:8]
                raise ValueError(f'{what} holds values {bad} outside 0..{self.num_classes - 1}'
                                 + (f' that are not the ignore index {self.ignore_index}' if what == 'target' else ''))
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        self.matrix += counts.view(self.num_classes, self.num_classes).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (a no-op without ``torch.distributed``)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, class_names: Optional[Sequence[str]] = None) -> dict:
        """``aAcc, mIoU, mF1, mPrecision, mRecall`` (floats, %), and per class ``IoU, F1,
        Precision, Recall`` (lists of floats, %, NaN where undefined) and ``classes``."""
        return scores(self.matrix, class_names)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.nan)


def scores(matrix: Tensor, class_names: Optional[Sequence[str]] = None) -> dict:
    """The metrics of a ``(C, C)`` confusion matrix ``matrix[true, pred]`` (see the module doc)."""
    matrix = matrix.double().cpu()
    num_classes = matrix.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
    tp = matrix.diagonal()
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    per_class = {'IoU': _ratio(tp, tp + fp + fn), 'F1': _ratio(2 * tp, 2 * tp + fp + fn),
                 'Precision': _ratio(tp, tp + fp), 'Recall': _ratio(tp, tp + fn)}
    result = {'aAcc': 100 * _ratio(tp.sum(), matrix.sum()).item()}
    for name, values in per_class.items():
        result[f'm{name}'] = 100 * values.nanmean().item()  # NaN when no class has it
    result.update({name: (100 * values).tolist() for name, values in per_class.items()})
    result['classes'] = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    return result


def relabel_by_majority(matrix: Tensor) -> tuple[Tensor, list[int]]:
    """Map each predicted class to its majority true class, and merge the columns accordingly.

    For a predictor whose classes are an unknown relabelling of the truth's (an iMacHSR adapter,
    trained with mutual information): ``mapping[p] = argmax_t matrix[t, p]``, and the returned
    matrix is ``M'[t, c] = sum_{p : mapping[p] = c} matrix[t, p]``. A class never predicted maps
    to itself (its column is empty). The mapping is fitted on the counts it then scores.
    """
    mapping = torch.where(matrix.sum(0) > 0, matrix.argmax(0), torch.arange(matrix.shape[1], device=matrix.device))
    merged = torch.zeros_like(matrix).index_add_(1, mapping, matrix)
    return merged, mapping.tolist()


def format_table(result: dict) -> str:
    """The per-class table and the summary of a ``scores`` result, as fixed-width text."""
    width = max(8, *(len(c) for c in result['classes']))
    lines = [f'{"class":<{width}} ' + ' '.join(f'{m:>9}' for m in CLASS_METRICS)]
    for i, name in enumerate(result['classes']):
        lines.append(f'{name:<{width}} ' + ' '.join(f'{result[m][i]:9.2f}' for m in CLASS_METRICS))
    lines.append(' '.join(f'{m} {result[m]:.2f}' for m in METRICS))
    return '\n'.join(lines)
