"""SYNTHIA-SF: synthetic driving sequences with colour-coded labels of 23 classes (void ignored)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._base import (IGNORE_INDEX, IMAGE_SUFFIXES, LABEL_SUFFIXES, ColourDecoder, SegmentationDataset,
                    index_files, match_pairs, natural_key)

# The 23 classes and colours of the README shipped with SYNTHIA-SF (Hernandez-Juarez et al., BMVC
# 2017, synthia-dataset.net), id = position; cross-checked against public SYNTHIA-SF loaders.
# Void (id 0) is the ignore index, so the train ids are the published ids minus one.
SYNTHIA_SF_LABELS = (
    ('void', (0, 0, 0)), ('road', (128, 64, 128)), ('sidewalk', (244, 35, 232)),
    ('building', (70, 70, 70)), ('wall', (102, 102, 156)), ('fence', (190, 153, 153)),
    ('pole', (153, 153, 153)), ('traffic light', (250, 170, 30)), ('traffic sign', (220, 220, 0)),
    ('vegetation', (107, 142, 35)), ('terrain', (152, 251, 152)), ('sky', (70, 130, 180)),
    ('person', (220, 20, 60)), ('rider', (255, 0, 0)), ('car', (0, 0, 142)), ('truck', (0, 0, 70)),
    ('bus', (0, 60, 100)), ('train', (0, 80, 100)), ('motorcycle', (0, 0, 230)),
    ('bicycle', (119, 11, 32)), ('road lines', (157, 234, 50)), ('other', (72, 0, 98)),
    ('road works', (167, 106, 29)),
)
SYNTHIA_SF_CLASSES = tuple(name for name, _ in SYNTHIA_SF_LABELS[1:])
SYNTHIA_SF_PALETTE = tuple(colour for _, colour in SYNTHIA_SF_LABELS[1:])
_DECODE = ColourDecoder({colour: i - 1 if i else IGNORE_INDEX
                         for i, (_, colour) in enumerate(SYNTHIA_SF_LABELS)})


class SynthiaSF(SegmentationDataset):
    """SYNTHIA-SF: ``<root>/SEQ*/RGBLeft/*.png`` frames, ``<root>/SEQ*/GTLeft/*.png`` colour labels.

    The dataset has no official split. ``split='all'`` reads every sequence; ``'train'`` / ``'val'``
    split by whole sequences (frames of one sequence are near-duplicates, so splitting frames would
    leak): ``val_sequences`` names the validation sequences, by default the last sequence in
    natural order (``SEQ6`` of ``SEQ1..SEQ6``), and train is every other sequence.
    An unknown colour in a label fails naming the file and the colour.
    """

    classes = SYNTHIA_SF_CLASSES
    palette = SYNTHIA_SF_PALETTE
    layout = '<root>/SEQ*/RGBLeft/*.png frames and <root>/SEQ*/GTLeft/*.png colour-coded labels'

    def __init__(self, root: str | Path, split: str = 'all', transform=None, *,
                 val_sequences: Sequence[str] | None = None, skip_unpaired: bool = False):
        self.val_sequences = None if val_sequences is None else tuple(val_sequences)
        super().__init__(root, split, transform, skip_unpaired=skip_unpaired)

    @staticmethod
    def sequences(root: Path) -> list[Path]:
        """The sequence folders under ``root`` in natural order."""
        return sorted((p for p in root.glob('SEQ*') if p.is_dir()), key=lambda p: natural_key(p.name))

    @classmethod
    def available_splits(cls, root: Path) -> list[str]:
        n = len(cls.sequences(root))
        return ['all', 'train', 'val'] if n > 1 else ['all'] if n else []

    @classmethod
    def check_splits(cls, root: Path) -> list[str]:
        return ['all'] if cls.sequences(root) else []

    def _scan(self):
        sequences = self.sequences(self.root)
        names = [s.name for s in sequences]
        val = self.val_sequences or names[-1:]
        unknown = sorted(set(val) - set(names))
        if unknown:
            raise ValueError(f'val_sequences {unknown} not found under {self.root}; sequences: {names}')
        if self.split != 'all':
            sequences = [s for s in sequences if (s.name in val) == (self.split == 'val')]
        pairs, problems = [], []
        for seq in sequences:
            image_dir, label_dir = seq / 'RGBLeft', seq / 'GTLeft'
            seq_pairs, seq_problems = match_pairs(index_files(image_dir, IMAGE_SUFFIXES),
                                                  index_files(label_dir, LABEL_SUFFIXES),
                                                  image_dir, label_dir)
            pairs += seq_pairs
            problems += seq_problems
        return pairs, problems

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return _DECODE(raw, path)
