"""Datasets by name."""
from __future__ import annotations

from pathlib import Path

from ._base import SegmentationDataset
from .camvid import CamVid
from .cityscapes import Cityscapes
from .folder import FolderDataset
from .synthia import SynthiaSF

DATASETS: dict[str, type[SegmentationDataset]] = {
    'camvid': CamVid,
    'cityscapes': Cityscapes,
    'synthia': SynthiaSF,
    'folder': FolderDataset,
}


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The dataset class registered as ``name`` (case-insensitive)."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f'unknown dataset {name!r}; valid names: {", ".join(DATASETS)}') from None


def create_dataset(name: str, root: str | Path, split: str, transform=None, **kwargs) -> SegmentationDataset:
    """Build dataset ``name`` ('camvid', 'cityscapes', 'synthia', 'folder') from ``root``.

    ``kwargs`` go to the class: ``classes=[...]`` (required) and ``palette`` for 'folder',
    ``label_type`` for 'cityscapes', ``val_sequences`` for 'synthia', ``skip_unpaired`` for all.
    """
    return dataset_class(name)(root, split, transform, **kwargs)
