"""Cityscapes fine annotations: 34 labelIds mapped to the 19 official trainIds."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from ._base import IGNORE_INDEX, SegmentationDataset, identity_lut, index_files, match_pairs

CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
                      'bus', 'train', 'motorcycle', 'bicycle')
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
                      (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
# labelId -> trainId of the evaluated classes, from cityscapesscripts/helpers/labels.py; the other
# labelIds 0..33 (unlabeled, ego vehicle, ground, parking, guard rail, caravan, ...) are ignored
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_ID_LUT = identity_lut({i: CITYSCAPES_TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(34)})

LabelType = Literal['auto', 'labelTrainIds', 'labelIds']


class Cityscapes(SegmentationDataset):
    """Cityscapes with fine labels (Cordts et al., CVPR 2016).

    Layout: ``<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
    ``<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``. ``label_type='auto'`` reads ready
    ``*_gtFine_labelTrainIds.png`` files (cityscapesscripts' createTrainIdLabelImgs) when the split
    has any, else maps ``labelIds`` to trainIds; name one to force it.
    """

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    layout = ('<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and '
              '<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png)')

    def __init__(self, root: str | Path, split: str = 'train', transform=None, *,
                 label_type: LabelType = 'auto', skip_unpaired: bool = False):
        if label_type not in get_args(LabelType):
            raise ValueError(f'label_type must be one of {get_args(LabelType)}, got {label_type!r}')
        self.label_type = label_type
        super().__init__(root, split, transform, skip_unpaired=skip_unpaired)

    @classmethod
    def available_splits(cls, root: Path) -> list[str]:
        return sorted({p.name for d in ('leftImg8bit', 'gtFine') for p in (root / d).glob('*') if p.is_dir()})

    def _scan(self):
        image_dir, label_dir = self.root / 'leftImg8bit' / self.split, self.root / 'gtFine' / self.split
        # resolved here, once the root is known to exist; self.label_type then tells what was read
        if self.label_type == 'auto':
            has_train_ids = next(label_dir.glob('*/*_gtFine_labelTrainIds.png'), None) is not None
            self.label_type = 'labelTrainIds' if has_train_ids else 'labelIds'
        # labelTrainIds files hold train ids already; labelIds go through the official map
        self.label_lut = None if self.label_type == 'labelTrainIds' else LABEL_ID_LUT
        images = index_files(image_dir, ('.png',), '*/*_leftImg8bit.png', key_suffix='_leftImg8bit')
        suffix = f'_gtFine_{self.label_type}'
        labels = index_files(label_dir, ('.png',), f'*/*{suffix}.png', key_suffix=suffix)
        return match_pairs(images, labels, image_dir, label_dir)
