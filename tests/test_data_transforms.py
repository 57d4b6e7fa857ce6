"""Augmentation pipelines: shapes, dtypes, labels never gaining values, per-worker randomness."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zoo.data import SAMPLE_ROOT, CamVid, FolderDataset, build_transforms


def image_and_label(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # blocky labels with a few classes and some ignore: interpolation would create in-between ids
    label = np.kron(rng.choice([0, 3, 7, 255], (h // 4, w // 4)), np.ones((4, 4), int)).astype(np.uint8)
    return image, label


@pytest.mark.parametrize('size', [(40, 52), (92, 120), (200, 152)])
def test_train_labels_keep_their_values(size):
    tf = build_transforms(True, crop_size=(64, 80))
    image, label = image_and_label(*size)
    allowed = set(np.unique(label).tolist()) | {255}
    for _ in range(10):
        out = tf(image=image, mask=label)
        assert out['image'].shape == (3, 64, 80) and out['image'].dtype == torch.float32
        assert out['mask'].shape == (64, 80)
        assert set(out['mask'].unique().tolist()) <= allowed


def test_train_pads_label_with_ignore_index():
    tf = build_transforms(True, crop_size=(64, 64), scale_range=(1.0, 1.0), ignore_index=250)
    image, _ = image_and_label(32, 32)
    out = tf(image=image, mask=np.zeros((32, 32), np.uint8))
    assert (out['mask'] == 250).sum() == 64 * 64 - 32 * 32


def test_eval_pipeline():
    image, label = image_and_label(40, 52)
    out = build_transforms(False)(image=image, mask=label)
    assert out['image'].shape == (3, 40, 52) and torch.equal(out['mask'], torch.from_numpy(label))
    assert out['image'].mean().abs() < 1  # normalised
    out = build_transforms(False, eval_size=(20, 24))(image=image, mask=label)
    assert out['image'].shape == (3, 20, 24) and out['mask'].shape == (20, 24)
    assert set(out['mask'].unique().tolist()) <= set(np.unique(label).tolist())


def test_dataset_with_transform_returns_tensors():
    ds = CamVid(SAMPLE_ROOT, 'val', transform=build_transforms(True))
    image, label = ds[0]
    assert image.shape == (3, 360, 480) and image.dtype == torch.float32
    assert label.shape == (360, 480) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(11)) | {255}


def test_workers_draw_different_augmentations(tmp_path: Path):
    image, label = image_and_label(64, 64)
    (tmp_path / 'images').mkdir()
    (tmp_path / 'masks').mkdir()
    for i in range(4):  # identical pairs: any difference between outputs is the augmentation's
        cv2.imwrite(str(tmp_path / 'images' / f'{i}.png'), image)
        cv2.imwrite(str(tmp_path / 'masks' / f'{i}.png'), label)
    ds = FolderDataset(tmp_path, classes=['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'],
                       transform=build_transforms(True, crop_size=(16, 16)))
    torch.manual_seed(0)
    batches = [x for x, _ in DataLoader(ds, batch_size=1, num_workers=2)]
    # batch 0 comes from worker 0 and batch 1 from worker 1, each worker's first draw
    assert not torch.equal(batches[0], batches[1])
