"""Is data loading the bottleneck? The CamVid train pipeline's images/s against the model's.

Three figures, each in images per second:
  * the pipeline alone (read, decode, scale jitter, crop, flip, colour jitter, normalise; batches
    of 8) with 0, 1 and 2 DataLoader workers, after the first batch (worker start-up is reported
    apart), median of the rounds, worker counts interleaved round by round;
  * the model alone: Adam training steps of ``topformer_tiny_imachsr`` on a batch of 8 crops that
    is already in memory;
  * the two together: a training loop fed by the DataLoader, with each worker count.
Real CamVid (``../shared/datasets/camvid`` beside the repository, as in configs/, or ``--root``) is used if present, else the ten
frames embedded in ``data/sample``.

    python bench/data_throughput.py [--root DIR] [--crop 360 480] [--workers 0 1 2]
"""
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader

import common
from zoo import create_model
from zoo.data import SAMPLE_ROOT, CamVid, build_transforms

REAL_ROOT = common.REPO_ROOT.parent / 'shared' / 'datasets' / 'camvid'  # as configs/ name it


def dataset(root: Optional[Path], crop: tuple[int, int]) -> CamVid:
    """CamVid's train split with the train pipeline; the embedded val sample when absent."""
    transform = build_transforms(train=True, crop_size=crop)
    root = root or (REAL_ROOT if (REAL_ROOT / 'train').is_dir() else None)
    if root is None:
        return CamVid(SAMPLE_ROOT, 'val', transform)
    return CamVid(root, 'train', transform)


def loader(data: CamVid, batch: int, workers: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      generator=generator)


def endless(data_loader: DataLoader) -> Iterator:
    """Batches without end: a small dataset is gone round again (workers restart each epoch)."""
    while True:
        yield from data_loader


def pipeline_rate(data: CamVid, batch: int, workers: int, batches: int) -> tuple[float, float]:
    """Seconds to the first batch, and images/s over the next ``batches``."""
    start = time.perf_counter()
    batches_iter = endless(loader(data, batch, workers))
    next(batches_iter)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return first, batches * batch / (time.perf_counter() - start)


def training_rate(model: torch.nn.Module, data: CamVid, batch: int, workers: int, steps: int) -> float:
    """Images/s of a training loop fed by a DataLoader, after its first step."""
    criterion = model.criterion()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = criterion(model(images), labels)['loss']
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = endless(loader(data, batch, workers))
    step(*next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = common.base_parser(__doc__.split('\n\n')[0])
    parser.add_argument('--root', type=Path, default=None, help=f'CamVid root (default: {REAL_ROOT} if present)')
    parser.add_argument('--model', default='topformer_tiny_imachsr')
    parser.add_argument('--crop', type=int, nargs=2, default=(360, 480), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batches', type=int, default=None, help='batches timed per pipeline round')
    parser.add_argument('--rounds', type=int, default=2, help='pipeline rounds per worker count')
    parser.add_argument('--quick', action='store_true', help='fewer batches and steps (a smoke test)')
    args = parser.parse_args()
    common.setup(args)
    args.batches = args.batches or (3 if args.quick else 8)
    args.repeats = args.repeats or (2 if args.quick else None)
    args.seconds = args.seconds or 10
    crop = tuple(args.crop)
    started = common.loadavg()
    data = dataset(args.root, crop)
    common.print_header(f'CamVid train pipeline vs {args.model} training, crop {crop[0]}x{crop[1]}, '
                        f'batch {args.batch}, cpu')
    print(f'data: {data.root} split {data.split!r}, {len(data)} images\n')

    pipeline: dict[int, dict[str, list[float]]] = {w: {'first_batch_s': [], 'images_per_s': []} for w in args.workers}
    for r in range(args.rounds):
        for w in args.workers[r % len(args.workers):] + args.workers[:r % len(args.workers)]:
            first, rate = pipeline_rate(data, args.batch, w, args.batches)
            pipeline[w]['first_batch_s'].append(first)
            pipeline[w]['images_per_s'].append(rate)
    load_pipeline = common.loadavg()

    model = create_model(args.model, num_classes=len(data.classes)).train()
    criterion = model.criterion()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, labels = next(iter(loader(data, args.batch, 0)))

    def step() -> None:
        loss = criterion(model(images), labels)['loss']
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model_times = common.interleaved({'model': step}, args.repeats, seconds=args.seconds)['model']
    model_rate = args.batch / common.median(model_times)
    load_model = common.loadavg()

    together = {w: training_rate(model, data, args.batch, w, len(model_times)) for w in args.workers}
    rows: list[dict[str, Any]] = []
    for w in args.workers:
        rate = common.median(pipeline[w]['images_per_s'])
        rows.append({'workers': w, 'pipeline_images_per_s': rate,
                     'first_batch_s': common.median(pipeline[w]['first_batch_s']),
                     'model_images_per_s': model_rate, 'pipeline_over_model': rate / model_rate,
                     'training_loop_images_per_s': together[w], 'pipeline_runs': pipeline[w]})
    print(common.table(
        ['workers', 'pipeline img/s', 'first batch s', 'model img/s', 'pipeline / model', 'loop img/s'],
        [[r['workers'], r['pipeline_images_per_s'], r['first_batch_s'], r['model_images_per_s'],
          r['pipeline_over_model'], r['training_loop_images_per_s']] for r in rows]))
    bound = [r['workers'] for r in rows if r['pipeline_over_model'] < 1]
    print(f'\nmodel alone: {1e3 * common.median(model_times):.0f} ms a step of {args.batch}; data loading is '
          + (f'the bottleneck with {bound} worker(s)' if bound else 'not the bottleneck with any worker count'))
    common.write_results('data_throughput', args, rows, started, data_root=str(data.root), data_split=data.split,
                         dataset_size=len(data), model_step_s=model_times,
                         loadavg_at={'pipeline': load_pipeline, 'model': load_model, 'loop': common.loadavg()})


if __name__ == '__main__':
    main()
