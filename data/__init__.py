"""Datasets (CamVid, Cityscapes, SYNTHIA-SF, folder of pairs), augmentation pipelines, checks."""
from pathlib import Path

from ._base import IGNORE_INDEX, IMAGE_SUFFIXES, DatasetError, SegmentationDataset, read_image
from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVid
from .check import DatasetReport, check_dataset
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_TRAIN_IDS, Cityscapes
from .factory import DATASETS, create_dataset, dataset_class
from .folder import FolderDataset
from .synthia import SYNTHIA_SF_CLASSES, SYNTHIA_SF_PALETTE, SynthiaSF
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

# ten CamVid val frames with labels, SegNet layout (see sample/README.md): CamVid(SAMPLE_ROOT, 'val')
SAMPLE_ROOT = Path(__file__).parent / 'sample' / 'camvid'

__all__ = [
    'SAMPLE_ROOT', 'IGNORE_INDEX', 'IMAGE_SUFFIXES', 'read_image', 'IMAGENET_MEAN', 'IMAGENET_STD', 'DATASETS',
    'create_dataset', 'dataset_class', 'build_transforms', 'check_dataset', 'DatasetReport', 'DatasetError',
    'SegmentationDataset', 'CamVid', 'Cityscapes', 'SynthiaSF', 'FolderDataset',
    'CAMVID_CLASSES', 'CAMVID_PALETTE', 'CITYSCAPES_CLASSES', 'CITYSCAPES_PALETTE', 'CITYSCAPES_TRAIN_IDS',
    'SYNTHIA_SF_CLASSES', 'SYNTHIA_SF_PALETTE',
]
