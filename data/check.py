"""Checking a whole dataset on disk: every pair read, decoded and validated, with a summary."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._base import DatasetError, SegmentationDataset, label_histogram
from .factory import dataset_class

MAX_PROBLEMS_SHOWN = 20


@dataclass
class DatasetReport:
    """What ``check_dataset`` found: pairs and pixels per split and class, and every problem."""

    name: str
    root: Path
    classes: tuple[str, ...] = ()
    pairs: dict[str, int] = field(default_factory=dict)
    # split -> labelled pixels per class; split -> pixels at the ignore index
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def frequencies(self) -> dict[str, float]:
        """Share of each class among the labelled pixels of all checked splits."""
        total = sum(self.pixels.values(), np.zeros(len(self.classes), dtype=np.int64))
        share = total / max(int(total.sum()), 1)
        return dict(zip(self.classes, share.tolist()))

    def format(self) -> str:
        """A readable summary: status, pairs per split, class frequency table, problems."""
        status = 'OK' if self.ok else f'{len(self.problems)} problem(s)'
        lines = [f'{self.name} at {self.root}: {status}']
        splits = list(self.pairs)
        if splits:
            ignored_row = 'ignored (% of all)'
            width = max(len(c) for c in (*self.classes, ignored_row)) + 2

            def row(label, cells):
                return f'{label:<{width}}' + ''.join(f'{c:>10}' for c in cells)

            lines += ['', row('split', splits), row('pairs', [self.pairs[s] for s in splits])]
            if self.classes:
                lines += ['', 'class pixels, % of labelled pixels:']
                shares = {s: self.pixels[s] / max(int(self.pixels[s].sum()), 1) * 100 for s in splits}
                lines += [row(name, [f'{shares[s][i]:.2f}%' for s in splits])
                          for i, name in enumerate(self.classes)]
                lines.append(row(ignored_row, [
                    f'{self.ignored[s] / max(int(self.pixels[s].sum()) + self.ignored[s], 1) * 100:.2f}%'
                    for s in splits]))
        if self.problems:
            lines += ['', 'problems:'] + [f'  - {p}' for p in self.problems[:MAX_PROBLEMS_SHOWN]]
            if len(self.problems) > MAX_PROBLEMS_SHOWN:
                lines.append(f'  ... and {len(self.problems) - MAX_PROBLEMS_SHOWN} more')
        return '\n'.join(lines)


def _check_pair(dataset: SegmentationDataset, index: int) -> tuple[np.ndarray | None, str | None]:
    try:
        _, label = dataset.load_pair(index)
    except DatasetError as err:
        return None, str(err)
    return label_histogram(label), None


def check_dataset(name: str, root: str | Path, splits: str | Sequence[str] | None = None,
                  num_threads: int = 8, **kwargs) -> DatasetReport:
    """Read and validate every pair of ``splits`` (default: every split present) of dataset ``name``.

    Problems (missing or wrong root, unpaired files, unreadable files, size mismatches, label
    values outside the classes) are collected, not raised. ``kwargs`` go to the dataset class.
    Files are read by ``num_threads`` threads (OpenCV decodes without holding the GIL).
    """
    cls = dataset_class(name)
    report = DatasetReport(name=name, root=Path(root), classes=tuple(cls.classes))
    try:
        root = cls.check_root(root)
        splits = [splits] if isinstance(splits, str) else list(splits) if splits else cls.check_splits(root)
    except DatasetError as err:
        report.problems.append(str(err))
        return report
    if not splits:
        report.problems.append(f'no splits found under {root}. Expected layout: {cls.layout}')
    for split in splits:
        try:
            dataset = cls(root, split, skip_unpaired=True, **kwargs)
        except DatasetError as err:
            report.problems.append(str(err))
            continue
        report.classes = dataset.classes
        report.problems += [f'split {split!r}: {p}' for p in dataset.unpaired]
        hist = np.zeros(256, dtype=np.int64)
        with ThreadPoolExecutor(num_threads) as pool:
            for pair_hist, problem in pool.map(_check_pair, [dataset] * len(dataset), range(len(dataset))):
                if problem is None:
                    hist += pair_hist
                else:
                    report.problems.append(problem)
        report.pairs[split] = len(dataset)
        report.pixels[split] = hist[:dataset.num_classes]
        report.ignored[split] = int(hist[dataset.ignore_index])
    return report
