"""What the benchmarks share: the machine's description, interleaved timing, fresh-process
memory probes, tables and the JSON results (``bench/results/<name>.json``)."""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / 'results'
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` from a plain clone finds `zoo`
    sys.path.insert(0, str(REPO_ROOT))


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """``HEAD``'s short hash, with ``+dirty`` when the tree has changes; ``unknown`` outside git."""
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain'], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return rev + ('+dirty' if dirty else '')


def machine_info(device: Optional[torch.device] = None) -> dict[str, Any]:
    """CPU, cores, memory, torch and its threads, and the GPU when ``device`` is CUDA."""
    info: dict[str, Any] = {
        'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'platform': platform.platform(),
        'python': platform.python_version(), 'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(), 'git': git_revision(),
    }
    try:
        pages, page_size = os.sysconf('SC_PHYS_PAGES'), os.sysconf('SC_PAGE_SIZE')
        info['memory_gib'] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device is not None and device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other processes share the CPU)."""
    return [round(x, 2) for x in os.getloadavg()]


def devices(requested: Optional[str]) -> list[torch.device]:
    """``requested`` alone, or CPU plus CUDA when a GPU is present."""
    if requested:
        return [torch.device(requested)]
    return [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed rounds (median); default: as many as fit in --seconds, at least 3')
    parser.add_argument('--seconds', type=float, default=None, help="seconds for the timed rounds of one comparison")
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    parser.add_argument('--num-classes', type=int, default=11, help='classes (default: CamVid\'s 11)')
    parser.add_argument('--out', type=Path, default=None, help='JSON file (default: bench/results/<name>.json)')
    return parser


def setup(args: argparse.Namespace) -> None:
    """Seed and set the thread count."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device`` (a no-op on CPU)."""
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(fns: dict[str, Callable[[], Any]], repeats: Optional[int] = None, warmup: int = 1,
                sync: Callable[[], None] = lambda: None, seconds: float = 30.0,
                min_repeats: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in rounds that visit every function once.

    After ``warmup`` (at least 1) untimed calls of each, round r calls the functions in their
    order rotated by r, so that load drifts and after-effects of a neighbour hit every variant
    alike. Without ``repeats``, as many rounds as fit in ``seconds`` by the last warm-up round's
    pace, and at least ``min_repeats``.
    """
    names = list(fns)
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        for name in names:
            fns[name]()
        sync()
        round_s = time.perf_counter() - start
    if repeats is None:
        repeats = max(min_repeats, int(seconds / round_s))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], name: str, reference: str) -> dict[str, float]:
    """Median and quartiles of the per-round ratios ``name / reference``, and the ratio of minima.

    Each round timed both variants close together, so a round's ratio cancels the load it met;
    the minima are each variant's least disturbed run.
    """
    ratios = sorted(a / b for a, b in zip(times[name], times[reference]))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive') if len(ratios) > 1 else ratios * 3
    return {'ratio': statistics.median(ratios), 'q1': q1, 'q3': q3,
            'min_ratio': min(times[name]) / min(times[reference])}


def in_fresh_process(fn: Callable[..., Any], *args: Any, env: Optional[dict[str, str]] = None) -> Any:
    """``fn(*args)`` in a new interpreter (``spawn``), with ``env`` added to its environment.

    ``fn`` must be a module-level function; its result comes back pickled.
    """
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        with multiprocessing.get_context('spawn').Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def rss_bytes() -> tuple[int, int]:
    """This process's resident set now and its peak (``VmRSS``, ``VmHWM``), in bytes."""
    fields = {}
    for line in Path('/proc/self/status').read_text().splitlines():
        key, _, value = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            fields[key] = int(value.split()[0]) * 1024
    return fields['VmRSS'], fields['VmHWM']


# glibc's malloc otherwise raises its mmap threshold after the first large free and keeps freed
# tensors in its heap, so RSS would tell the allocator's history rather than the live tensors.
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(1 << 20)}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: columns as wide as their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        lines.append('  '.join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.3f}' if abs(value) < 100 else f'{value:.1f}'
    return str(value)


def write_results(name: str, args: argparse.Namespace, results: Any, started_load: list[float],
                  device: Optional[torch.device] = None, **extra: Any) -> Path:
    """Write ``bench/results/<name>.json`` (or ``args.out``) with the machine and the load seen."""
    path = args.out or RESULTS_DIR / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'benchmark': name, 'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'command': ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        'args': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        'machine': machine_info(device), 'loadavg': {'start': started_load, 'end': loadavg()},
        **extra, 'results': results,
    }
    path.write_text(json.dumps(payload, indent=2) + '\n')
    print(f'\nwrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}')
    return path


def print_header(title: str, device: Optional[torch.device] = None) -> None:
    """The benchmark's title, the machine and the current load."""
    info = machine_info(device)
    gpu = f", {info['gpu']}" if 'gpu' in info else ''
    load = loadavg()
    print(f"{title}\n{info['cpu']} ({info['cpu_count']} cores){gpu}; torch {info['torch']}, "
          f"{info['torch_threads']} threads; load average {load}")
    if load[0] > 0.5 * (info['cpu_count'] or 1):
        print('warning: other processes are using the CPU; the figures will be noisy')
    print()
