"""Figures: coloured label maps, overlays, side-by-side panels (OpenCV), and with matplotlib
(the optional extra ``plot``) normalised confusion matrices and training curves."""
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from torch import Tensor

IGNORE_COLOUR = (0, 0, 0)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """An ``H x W`` label map as RGB with ``palette[c]`` for class c and black for ignored pixels."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = IGNORE_COLOUR
    return lut[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, colours: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``image`` with ``colours`` blended in: ``(1 - opacity) image + opacity colours``."""
    return cv2.addWeighted(image, 1 - opacity, colours, opacity, 0)


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``(3, H, W)`` tensor back to RGB uint8 ``H x W x 3``."""
    pixels = image.detach().cpu().float().permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)


def panel(columns: Mapping[str, np.ndarray], title_height: int = 22, gap: int = 4) -> np.ndarray:
    """Same-size RGB images side by side, each under its title (image | ground truth | models)."""
    tiles = []
    for title, image in columns.items():
        bar = np.full((title_height, image.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(bar, title, (4, title_height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, image], 0))
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, spacer)][:-1], 1)


def write_rgb(path: Union[str, Path], image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image):
        raise RuntimeError(f'could not write {path} (unsupported extension or unwritable folder?)')
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'imachsr-zoo[plot]'") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Union[str, Path], title: str = '') -> Path:
    """The confusion matrix normalised per true class (each row sums to 1: recall on the diagonal)."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha='right')
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if len(classes) <= 25:
        for (t, p), value in np.ndenumerate(rows):
            ax.text(p, t, f'{value:.2f}', ha='center', va='center', fontsize=7,
                    color='white' if value > 0.5 else 'black')
    ax.set_title(title or 'confusion matrix (rows normalised)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def read_metrics_log(run_dir: Union[str, Path]) -> list[dict]:
    log = Path(run_dir) / 'metrics.jsonl'
    if not log.is_file():
        raise FileNotFoundError(f'{log} does not exist: is {run_dir} a run folder of zoo train?')
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Union[str, Path], path: Union[str, Path, None] = None) -> Path:
    """Training curves of a run folder: the objective and output CE, each kind of point loss,
    the learning rate, and validation mIoU/aAcc. Written to ``path`` (``<run_dir>/curves.png``)."""
    plt = _pyplot()
    records = read_metrics_log(run_dir)
    train = [r for r in records if r['kind'] == 'train']
    val = [r for r in records if r['kind'] == 'val']
    if not train:
        raise ValueError(f'{Path(run_dir) / "metrics.jsonl"} holds no training records yet')
    terms = list(dict.fromkeys(k for r in train for k in r if k not in ('kind', 'step', 'epoch', 'lr', 'images_per_s',
                                                                      'skipped')))
    groups: dict[str, list[str]] = {'output': [k for k in terms if '.' not in k]}
    for term in terms:
        if '.' in term:
            groups.setdefault(f'points: {term.rsplit(".", 1)[1]}', []).append(term)
    panels = [*groups.items(), ('learning rate', ['lr'])]
    fig, axes = plt.subplots(1, len(panels) + bool(val), figsize=(4.2 * (len(panels) + bool(val)), 3.6))
    steps = [r['step'] for r in train]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(steps, [r.get(key, np.nan) for r in train], label=key)
        ax.set_title(title)
        ax.set_xlabel('step')
        ax.legend(fontsize=7)
    if val:
        ax = axes[-1]
        for key in ('mIoU', 'aAcc'):
            ax.plot([r['step'] for r in val], [r[key] for r in val], marker='o', label=f'{val[0]["split"]} {key}')
        ax.set_title('validation (%)')
        ax.set_xlabel('step')
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path) if path else Path(run_dir) / 'curves.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
