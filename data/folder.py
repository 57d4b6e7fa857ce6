"""A plain folder of images and single-channel class-index masks, classes named by the user."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._base import (IMAGE_SUFFIXES, LABEL_SUFFIXES, Palette, SegmentationDataset, index_files,
                    match_pairs)


def default_palette(num_classes: int) -> Palette:
    """The PASCAL VOC colour map: distinct, stable colours for any number of classes."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)


class FolderDataset(SegmentationDataset):
    """Image/mask pairs with the same stem in ``images/`` and ``masks/``.

    Either ``<root>/images`` + ``<root>/masks`` (split ``'all'``) or ``<root>/<split>/images`` +
    ``<root>/<split>/masks`` for any split name. A mask holds class indices ``0..len(classes)-1``
    and ``ignore_index`` (255) for pixels to ignore; ``palette`` only serves display.
    """

    layout = ('<root>/images/ + <root>/masks/ (split "all") or <root>/<split>/images/ + '
              '<root>/<split>/masks/, masks being single-channel class-index PNGs with the image stems')

    def __init__(self, root: str | Path, split: str = 'all', transform=None, *, classes: Sequence[str],
                 palette: Sequence[Sequence[int]] | None = None, skip_unpaired: bool = False):
        if isinstance(classes, str) or not classes:
            raise ValueError(f'classes must be a non-empty list of class names, got {classes!r}')
        self.classes = tuple(classes)
        if palette is None:
            self.palette = default_palette(len(self.classes))
        elif len(palette) != len(self.classes) or any(len(c) != 3 for c in palette):
            raise ValueError(f'palette must hold one (r, g, b) per class: {len(self.classes)} classes, '
                             f'got {len(palette)} entries')
        else:
            self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        super().__init__(root, split, transform, skip_unpaired=skip_unpaired)

    @classmethod
    def available_splits(cls, root: Path) -> list[str]:
        splits = ['all'] if (root / 'images').is_dir() or (root / 'masks').is_dir() else []
        return splits + sorted(p.name for p in root.iterdir()
                               if p.is_dir() and ((p / 'images').is_dir() or (p / 'masks').is_dir()))

    def _scan(self):
        base = self.root if self.split == 'all' else self.root / self.split
        image_dir, label_dir = base / 'images', base / 'masks'
        return match_pairs(index_files(image_dir, IMAGE_SUFFIXES), index_files(label_dir, LABEL_SUFFIXES),
                           image_dir, label_dir)
