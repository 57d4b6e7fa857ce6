"""What the head set costs in training: step time and peak memory of ``_ds`` and ``_imachsr``
against the baseline, for K supervised points.

A step is forward + loss + backward + Adam step, at 512x512, batch 4. Step times come from one
process, the variants of a family interleaved round by round: ``time x`` is the median of the
per-round ratios to the baseline, ``min x`` the ratio of the fastest steps. Peak memory comes from a fresh process per configuration: on CPU the growth of the
peak resident set over the process's size after its imports (model, Adam state, batch and
activations), on CUDA ``torch.cuda.max_memory_allocated``.

The K points are taken in this order of preference, each group in forward order: stage ends past
the stem (stride >= 4), which is what ``points='auto'`` picks with K = 3; then the other
candidates past the stem; then the stem's. TopFormer and ResNet-18 have four stage ends past the
stem, so their K = 5 adds one more candidate (TopFormer's ``tpm.2``, ResNet's stem ``act1``).

    python bench/train_overhead.py            # K in 0 (baseline), 1, 3, 5; _ds at K = 3
    python bench/train_overhead.py --full     # K = 0..5, _ds at every K, longer timing
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

import common
from zoo import create_model
from zoo.backbone import SupervisableBackbone

FAMILIES = ('topformer_base', 'seaformer_base', 'deeplabv3plus_resnet18')
TARGET_TIME, TARGET_MEMORY, TARGET_K = 1.10, 1.15, 3


POINT_RULE = ('stage ends past the stem (stride >= 4) first, as points=auto with K=3; then the other '
              'candidates past the stem; then the stem\'s; in forward order')


def supervision_points(backbone: SupervisableBackbone, k: int) -> list[str]:
    """``k`` points by the preference of ``POINT_RULE``, in forward order."""
    candidates = backbone.feature_info
    preference = sorted(range(len(candidates)), key=lambda i: (
        candidates[i]['reduction'] < 4, candidates[i]['kind'] != 'stage', i))
    if k > len(candidates):
        raise ValueError(f'K={k}: {type(backbone).__name__} has {len(candidates)} candidate points')
    return [candidates[i]['name'] for i in sorted(preference[:k])]


@dataclass(frozen=True)
class Config:
    family: str
    variant: str  # 'baseline', 'ds' or 'imachsr'
    k: int

    @property
    def label(self) -> str:
        return 'baseline' if self.variant == 'baseline' else f'{self.variant} K={self.k}'


class TrainStep:
    """One Adam training step of a configuration on a fixed random batch."""

    def __init__(self, config: Config, device: torch.device, batch: int, size: int, num_classes: int):
        name = config.family if config.variant == 'baseline' else f'{config.family}_{config.variant}'
        points = None
        if config.variant != 'baseline':
            points = supervision_points(create_model(config.family, num_classes=num_classes).backbone, config.k)
        self.model: nn.Module = create_model(name, num_classes=num_classes, points=points).to(device).train()
        self.points = points or []
        self.criterion = self.model.criterion().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        self.images: Tensor = torch.randn(batch, 3, size, size, generator=generator).to(device)
        self.labels: Tensor = torch.randint(0, num_classes, (batch, size, size), generator=generator).to(device)

    def init_optimizer_state(self) -> None:
        """Allocate Adam's moments (a step on zero gradients) so that one real step shows the
        steady-state peak."""
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        loss = self.criterion(self.model(self.images), self.labels)['loss']
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def peak_memory(config: Config, device_name: str, batch: int, size: int, num_classes: int,
                threads: Optional[int]) -> int:
    """Peak bytes of one training step of ``config``; run it in a fresh process."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.ones(256, 256) @ torch.ones(256, 256)  # start the thread pool before the baseline reading
    start_rss, _ = common.rss_bytes()
    step = TrainStep(config, device, batch, size, num_classes)
    step.init_optimizer_state()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return common.rss_bytes()[1] - start_rss


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope x`` and its r^2."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {'slope': slope, 'intercept': intercept, 'r2': 1 - ss_res / ss_tot if ss_tot else 1.0}


def configs_of(family: str, ks: list[int], ds_ks: list[int]) -> list[Config]:
    return ([Config(family, 'baseline', 0)] + [Config(family, 'ds', k) for k in ds_ks]
            + [Config(family, 'imachsr', k) for k in ks if k > 0])


def run_family(family: str, device: torch.device, args: Any) -> list[dict[str, Any]]:
    """Time and measure every configuration of ``family``; rows as reported."""
    configs = configs_of(family, args.ks, args.ds_ks)
    steps = {c: TrainStep(c, device, args.batch, args.size, args.num_classes) for c in configs}
    load_before = common.loadavg()
    times = common.interleaved({c.label: steps[c] for c in configs}, args.repeats, args.warmup,
                               common.synchronizer(device), args.seconds, min_repeats=5 if args.full else 3)
    load_after = common.loadavg()
    memory = {c: common.in_fresh_process(peak_memory, c, device.type, args.batch, args.size,
                                         args.num_classes, args.threads, env=common.MALLOC_ENV)
              for c in configs}
    base = configs[0]
    rows = []
    for c in configs:
        ratio = common.paired_ratio(times, c.label, base.label)
        rows.append({
            'family': family, 'variant': c.variant, 'k': c.k, 'points': steps[c].points,
            'device': device.type, 'rounds': len(times[c.label]), 'step_s': common.median(times[c.label]),
            'step_s_all': times[c.label],
            'time_ratio': ratio['ratio'], 'time_ratio_q1': ratio['q1'], 'time_ratio_q3': ratio['q3'],
            'time_ratio_of_minima': ratio['min_ratio'],
            'peak_mib': memory[c] / 2**20, 'memory_ratio': memory[c] / memory[base],
            'loadavg': [load_before, load_after]})
    return rows


def main() -> None:
    parser = common.base_parser(__doc__.split('\n\n')[0])
    parser.add_argument('--families', nargs='+', default=list(FAMILIES))
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cpu, and cuda when present)')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--full', action='store_true', help='K = 0..5, _ds at every K, timing 120 s a family (default 25)')
    parser.add_argument('--quick', action='store_true', help='K in {0, 3}, 2 rounds (a smoke test)')
    args = parser.parse_args()
    common.setup(args)
    args.ks = list(range(6)) if args.full else [0, 3] if args.quick else [0, 1, 3, 5]
    args.ds_ks = [k for k in args.ks if k > 0] if args.full else [TARGET_K]
    args.repeats = args.repeats or (2 if args.quick else None)
    args.seconds = args.seconds or (120 if args.full else 25)
    started = common.loadavg()
    results: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    for device in common.devices(args.device):
        common.print_header(f'Training-step overhead of the head set: {args.size}x{args.size}, batch {args.batch}, '
                            f'Adam, {device.type}, median of N interleaved rounds', device)
        rows = []
        for family in args.families:
            family_rows = run_family(family, device, args)
            rows += family_rows
            imachsr = [r for r in family_rows if r['variant'] in ('baseline', 'imachsr')]
            for what in ('time_ratio', 'memory_ratio'):
                fit = fit_line([r['k'] for r in imachsr], [r[what] for r in imachsr])
                fits.append({'family': family, 'device': device.type, 'of': what, **fit})
        results += rows
        print(common.table(
            ['model', 'variant', 'K', 'points', 'N', 'step s', 'time x', 'IQR', 'min x', 'peak MiB', 'memory x'],
            [[r['family'], r['variant'], r['k'], ','.join(r['points']) or '-', r['rounds'], r['step_s'], r['time_ratio'],
              f"{r['time_ratio_q1']:.3f}-{r['time_ratio_q3']:.3f}", r['time_ratio_of_minima'], r['peak_mib'],
              r['memory_ratio']]
             for r in rows]))
        print('\nLinear fit of the _imachsr ratio against K (baseline = K 0): ratio = intercept + slope K')
        print(common.table(['model', 'of', 'slope', 'intercept', 'r^2'],
                           [[f['family'], f['of'], f['slope'], f['intercept'], f['r2']]
                            for f in fits if f['device'] == device.type]))
        print(f'\nTarget: _imachsr with K={TARGET_K} at most {TARGET_TIME:.2f}x the step time and '
              f'{TARGET_MEMORY:.2f}x the peak memory')
        for r in rows:
            if r['variant'] == 'imachsr' and r['k'] == TARGET_K:
                ok = r['time_ratio'] <= TARGET_TIME and r['memory_ratio'] <= TARGET_MEMORY
                print(f"  {r['family']:<24} time {r['time_ratio']:.3f}x  memory {r['memory_ratio']:.3f}x  "
                      f"{'met' if ok else 'NOT met'}")
    common.write_results('train_overhead', args, results, started,
                         next((d for d in common.devices(args.device) if d.type == 'cuda'), None),
                         fits=fits, point_rule=POINT_RULE,
                         memory_measure={'cpu': 'peak RSS growth over the fresh process after imports, '
                                                f'{common.MALLOC_ENV}',
                                         'cuda': 'torch.cuda.max_memory_allocated'})


if __name__ == '__main__':
    main()
