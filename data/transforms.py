"""Albumentations pipelines for training and evaluation."""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2

# albumentations asks PyPI for a newer version on import (a 2 s stall offline); opt out unless
# the user decided otherwise
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from .._pretrained import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ._base import IGNORE_INDEX  # noqa: E402


def build_transforms(train: bool, crop_size: tuple[int, int] = (360, 480),
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     scale_range: tuple[float, float] = (0.5, 2.0), ignore_index: int = IGNORE_INDEX,
                     eval_size: tuple[int, int] | None = None) -> A.Compose:
    """The augmentation pipeline for an (image, mask) pair, ending in tensors.

    train: random scale in ``scale_range``, pad to ``crop_size`` (HxW; image with 0, mask with
    ``ignore_index``), random crop, horizontal flip, colour jitter, normalise, to tensor.
    eval: optional resize to ``eval_size`` (HxW), normalise, to tensor.
    Masks are only ever resized with nearest-neighbour, so they never gain new values.
    """
    normalise = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    if not train:
        resize = [] if eval_size is None else [
            A.Resize(*eval_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
        return A.Compose(resize + normalise)
    height, width = crop_size
    low, high = scale_range
    return A.Compose([
        # scale_limit is relative to 1: (0.5, 2.0) is written (-0.5, 1.0)
        A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=ignore_index),
        A.RandomCrop(height=height, width=width),
        A.HorizontalFlip(p=0.5),
        # about the ranges of mmseg's PhotoMetricDistortion (brightness +-32/255, contrast and
        # saturation 0.5-1.5, hue +-18 of OpenCV's 180), in ColorJitter's terms
        A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.1, p=0.5),
        *normalise,
    ])
