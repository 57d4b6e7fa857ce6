"""Shared machinery of the segmentation datasets: pairing, loading, decoding and validation."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = 255
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp')
# Lossless formats only: a JPEG-compressed label map would carry invented class ids at edges.
LABEL_SUFFIXES = ('.png', '.bmp', '.tif', '.tiff')

Palette = tuple[tuple[int, int, int], ...]


class DatasetError(ValueError):
    """A dataset on disk is missing, misplaced or malformed; the message names the path."""


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'cannot read image {path}: missing, unreadable or not a valid image file')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Read a label file as stored (no colour conversion, bit depth kept); colour labels come back RGB."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f'cannot read label {path}: missing, unreadable or not a valid image file')
    if label.ndim == 3:
        label = cv2.cvtColor(label[..., :3], cv2.COLOR_BGR2RGB)
    return label


def label_histogram(label: np.ndarray) -> np.ndarray:
    """Pixel count of every value 0..255 of a uint8 label map."""
    return np.bincount(label.ravel(), minlength=256)


def identity_lut(mapping: dict[int, int] | None = None) -> np.ndarray:
    """A 256-entry uint8 lookup table, identity except for ``mapping``.

    Unmapped values pass through unchanged, so a stray value in a file is reported as itself by
    the range check instead of being silently folded into a class or the ignore index.
    """
    lut = np.arange(256, dtype=np.uint8)
    for src, dst in (mapping or {}).items():
        lut[src] = dst
    return lut


def natural_key(text: str) -> list:
    """Sort key that orders 'SEQ2' before 'SEQ10'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r'(\d+)', text)]


def index_files(folder: Path, suffixes: Sequence[str], pattern: str = '*',
                key_suffix: str = '') -> dict[str, Path]:
    """Map the stem of every file in ``folder`` matching ``pattern`` and ``suffixes`` to its path.

    ``key_suffix`` is cut off the stem (Cityscapes' ``_leftImg8bit``) so that image and label
    names reduce to the same key. Two files with one key (``a.png`` and ``a.jpg``) are ambiguous.
    """
    files: dict[str, Path] = {}
    for path in sorted(folder.glob(pattern)):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        key = path.stem[:-len(key_suffix)] if key_suffix else path.stem
        if key in files:
            raise DatasetError(f'ambiguous files {files[key]} and {path}: both match the same pair')
        files[key] = path
    return files


def _listing(paths: Iterable[Path], limit: int = 5) -> str:
    paths = sorted(paths)
    shown = ', '.join(str(p) for p in paths[:limit])
    return shown + (f' ... and {len(paths) - limit} more' if len(paths) > limit else '')


def match_pairs(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path,
                ) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair images and labels by key; also return one message per kind of unmatched file."""
    pairs = [(images[k], labels[k]) for k in sorted(images.keys() & labels.keys())]
    problems = []
    no_label = [images[k] for k in images.keys() - labels.keys()]
    no_image = [labels[k] for k in labels.keys() - images.keys()]
    if no_label:
        problems.append(f'{len(no_label)} image(s) without a label in {_where(label_dir)}: '
                        f'{_listing(no_label)}')
    if no_image:
        problems.append(f'{len(no_image)} label(s) without an image in {_where(image_dir)}: '
                        f'{_listing(no_image)}')
    return pairs, problems


def _common_dir(paths: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _where(folder: Path) -> str:
    return str(folder) if folder.is_dir() else f'{folder} (folder missing)'


class ColourDecoder:
    """Turns an RGB colour-coded label map into ids with a colour -> id table."""

    def __init__(self, colours: dict[tuple[int, int, int], int]):
        self.colours = dict(colours)
        # a free uint8 value marks unknown colours in the lookup table
        self.unknown = min(set(range(256)) - set(self.colours.values()))

    @staticmethod
    def _pack(rgb: np.ndarray) -> np.ndarray:
        rgb = rgb.astype(np.uint32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    @cached_property
    def lut(self) -> np.ndarray:
        # one entry per 24-bit colour (16 MiB, built on first use): a gather is ~10x faster than
        # searching the few known colours for every pixel of a 1080p label
        lut = np.full(1 << 24, self.unknown, dtype=np.uint8)
        for colour, index in self.colours.items():
            lut[self._pack(np.array(colour))] = index
        return lut

    def __call__(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        if rgb.ndim != 3 or rgb.dtype != np.uint8:
            raise DatasetError(f'label {path} is not an 8-bit RGB colour image '
                               f'(shape {rgb.shape}, dtype {rgb.dtype})')
        packed = self._pack(rgb)
        ids = self.lut[packed]
        unknown = ids == self.unknown
        if unknown.any():
            found = np.unique(packed[unknown])
            colours = [(int(k) >> 16, (int(k) >> 8) & 255, int(k) & 255) for k in found[:5]]
            more = f' (and {len(found) - 5} more)' if len(found) > 5 else ''
            raise DatasetError(f'label {path} has {int(unknown.sum())} pixels of unknown colour(s) '
                               f'{colours}{more}; expected one of the {len(self.colours)} class colours')
        return ids


class SegmentationDataset(Dataset):
    """Image/label pairs on disk, decoded to train ids in ``0..num_classes-1`` or ``ignore_index``.

    Subclasses define ``classes``, ``palette``, ``layout`` (for error messages), the splits found
    under a root and how to pair files; this base does the loading, decoding and checking.
    Cheap checks (root, split, pairing) run at construction, per-file ones in ``__getitem__``.

    ``__getitem__`` returns ``(image, label)``: without a transform an RGB uint8 HxWx3 array and an
    int64 HxW array; with an albumentations transform its ``image`` and ``mask`` (label as int64).
    """

    classes: tuple[str, ...] = ()
    palette: Palette = ()
    ignore_index: int = IGNORE_INDEX
    layout: str = ''
    # raw label value -> train id; None: stored values are train ids already
    label_lut: np.ndarray | None = None

    def __init__(self, root: str | Path, split: str, transform=None, *, skip_unpaired: bool = False):
        self.root = self.check_root(root)
        splits = self.available_splits(self.root)
        if split not in splits:
            raise DatasetError(f'{type(self).__name__}: split {split!r} not found under {self.root}; '
                               f'splits present: {splits or "none"}. Expected layout: {self.layout}')
        if len(self.classes) > self.ignore_index:
            raise DatasetError(f'{type(self).__name__}: {len(self.classes)} classes do not fit '
                               f'below the ignore index {self.ignore_index}')
        self.split = split
        self.transform = transform
        self.pairs, self.unpaired = self._scan()
        if self.unpaired and not skip_unpaired:
            raise DatasetError(f'{type(self).__name__} split {split!r} under {self.root}: '
                               + '; '.join(self.unpaired))
        if not self.pairs:
            raise DatasetError(f'{type(self).__name__}: no image/label pairs for split {split!r} '
                               f'under {self.root}. Expected layout: {self.layout}')
        self._worker_id: int | None = None

    @classmethod
    def check_root(cls, root: str | Path) -> Path:
        """Return ``root`` as a Path, or fail naming it and the expected layout."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f'{cls.__name__} root {root} does not exist or is not a directory. '
                               f'Expected layout: {cls.layout}')
        return root

    @classmethod
    def available_splits(cls, root: Path) -> list[str]:
        """Names of the splits that can be loaded from ``root``."""
        raise NotImplementedError

    @classmethod
    def check_splits(cls, root: Path) -> list[str]:
        """Splits that together cover every file once: what ``check_dataset`` reads by default."""
        return cls.available_splits(root)

    def _scan(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        """Find the (image, label) pairs of ``self.split`` and describe the unpaired files."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map a label as read from ``path`` to uint8 train ids (values are checked later)."""
        if raw.ndim != 2:
            raise DatasetError(f'label {path} has {raw.shape[2]} channels; expected a single-channel '
                               f'image of class indices')
        if raw.dtype != np.uint8:
            if not np.issubdtype(raw.dtype, np.integer) or raw.max() > 255:
                raise DatasetError(f'label {path} has dtype {raw.dtype} and maximum {raw.max()}; '
                                   f'expected class indices below 256')
            raw = raw.astype(np.uint8)
        return raw if self.label_lut is None else self.label_lut[raw]

    def check_label_values(self, label: np.ndarray, path: Path) -> np.ndarray:
        """Fail on train ids outside the classes that are not the ignore index; return the histogram."""
        hist = label_histogram(label)
        bad = np.flatnonzero(hist[self.num_classes:]) + self.num_classes
        bad = bad[bad != self.ignore_index]
        if bad.size:
            raise DatasetError(f'label {path} has values {bad.tolist()} outside the {self.num_classes} '
                               f'classes 0..{self.num_classes - 1} and not the ignore index '
                               f'{self.ignore_index}')
        return hist

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, decode and check pair ``index``: RGB uint8 HxWx3 image, uint8 HxW train ids."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.decode_label(read_label(label_path), label_path)
        if image.shape[:2] != label.shape[:2]:
            raise DatasetError(f'size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} '
                               f'but label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH)')
        self.check_label_values(label, label_path)
        return image, label

    def __getitem__(self, index: int) -> tuple:
        image, label = self.load_pair(index)
        if self.transform is None:
            return image, label.astype(np.int64)
        self._seed_transform_in_worker()
        out = self.transform(image=image, mask=label)
        mask = out['mask']
        mask = mask.long() if isinstance(mask, torch.Tensor) else np.asarray(mask, dtype=np.int64)
        return out['image'], mask

    def _seed_transform_in_worker(self) -> None:
        # albumentations.Compose keeps its own RNG, which every DataLoader worker inherits in the
        # same state: unseeded, all workers would draw identical augmentations. torch gives each
        # worker a distinct seed (reproducible under torch.manual_seed), so hand it over once.
        info = torch.utils.data.get_worker_info()
        if info is None or info.id == self._worker_id or not hasattr(self.transform, 'set_random_seed'):
            return
        self.transform.set_random_seed(info.seed % 2**32)
        self._worker_id = info.id

    def describe(self) -> str:
        """A few lines on what was found where, the classes and the ignore index."""
        lines = [f'{type(self).__name__} split {self.split!r}: {len(self)} image/label pairs',
                 f'  images under {_common_dir(p[0] for p in self.pairs)}',
                 f'  labels under {_common_dir(p[1] for p in self.pairs)}',
                 f'  {self.num_classes} classes: {", ".join(self.classes)}',
                 f'  ignore index: {self.ignore_index}']
        if self.unpaired:
            lines.append('  skipped: ' + '; '.join(self.unpaired))
        return '\n'.join(lines)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root='{self.root}', split='{self.split}', "
                f'pairs={len(self)}, num_classes={self.num_classes})')
