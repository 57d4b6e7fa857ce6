"""The CamVid experiments of the README, on a CPU budget: the iMacHSR search, the TopFormer-Tiny
ablations and the results table, then the published weights.

    python references/camvid/experiments.py train search ablation   # seed 0, topformer_tiny
    python references/camvid/experiments.py train main              # every recipe, its seeds
    python references/camvid/experiments.py report                  # tables and plots
    python references/camvid/experiments.py export                  # best seeds -> weights/

Each run trains with a recipe of ``configs/camvid`` and the CPU schedule below, in
``runs/camvid/<run>/``, then is scored by ``zoo eval`` on CamVid val (``eval_val.json``). A run
that stopped resumes from its newest checkpoint; a scored run is skipped. Runs whose settings
resolve to the same training (``points: auto`` and its explicit names, say) are one run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / 'configs' / 'camvid'
RUNS = REPO / 'runs' / 'camvid'
RESULTS = Path(__file__).resolve().parent / 'results'
DATA_ROOT = REPO.parent / 'shared' / 'datasets' / 'camvid'

# What 2 CPU cores allow (README, Results): crops of a quarter of the frame, a few epochs, the
# warm-up shortened in proportion; the evaluation is the full 360x480 frame.
CPU_SCHEDULE: dict[str, Any] = {
    'crop_size': [192, 256], 'scale_range': [0.75, 1.5], 'batch_size': 4, 'workers': 1,
    'warmup_iters': 50, 'val_split': None, 'log_interval': 20, 'ckpt_interval': 100, 'keep_last': 1,
}
EPOCHS = {'topformer_base': 4, 'topformer_tiny': 6, 'seaformer_tiny': 6, 'seaformer_base': 4,
          'deeplabv3plus_resnet18': 2}
SEEDS = {'topformer_tiny': (0, 1, 2), 'seaformer_tiny': (0, 1, 2)}  # the others: seed 0
VARIANTS = ('', '_ds', '_imachsr')
METRICS = ('mIoU', 'mF1', 'mPrecision', 'mRecall')
# The paper's CamVid table (random 600/101 split): baseline -> iMacHSR mIoU.
PAPER = {'deeplabv3plus_resnet18': (76.02, 76.13), 'seaformer': (50.69, 55.83), 'topformer': (63.10, 66.38)}

ABLATION_MODEL = 'topformer_tiny'
SEARCH = [{'alpha': a, 'beta': b} for a, b in ((0.4, 0.02), (0.4, 0.0), (0.4, 0.1), (0.2, 0.02), (1.0, 0.02))]
# The search and the ablations came first, holding the rest of the head set where the recipes had
# it then (TopFormer's first three stage ends; alpha 0.4, beta 0.02); the recipes have since taken
# their outcome, so what they held fixed is pinned here.
SEARCH_POINTS = ['tpm.3', 'tpm.5', 'tpm.7']
ABLATION_WEIGHTS = {'alpha': 0.4, 'beta': 0.02}
ABLATIONS = {
    'points': [f'uniform:{k}' for k in range(1, 6)],
    'distance': [f'central:3:{d}' for d in (1, 2, 3)],
    'position': [f'{where}:{k}' for where in ('input', 'central', 'output') for k in (1, 2, 3)],
}


@dataclass
class Run:
    recipe: str                                   # configs/camvid/<recipe>.yaml
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.recipe.removesuffix('_imachsr').removesuffix('_ds')

    @property
    def name(self) -> str:
        parts = [self.recipe] + [f'{k}={_slug(v)}' for k, v in sorted(self.overrides.items())] + [f's{self.seed}']
        return '-'.join(parts)

    @property
    def dir(self) -> Path:
        return RUNS / self.name

    def config(self):
        from zoo.engine import TrainConfig
        return TrainConfig.from_yaml(RECIPES / f'{self.recipe}.yaml', **CPU_SCHEDULE, **self.overrides,
                                     epochs=EPOCHS[self.family], seed=self.seed, root=str(DATA_ROOT),
                                     run_dir=str(self.dir))

    def result(self) -> Optional[dict]:
        report = self.dir / 'eval_val.json'
        if not report.is_file():
            return None
        return next(iter(json.loads(report.read_text())['models'].values()))


def _slug(value: Any) -> str:
    return '+'.join(map(str, value)) if isinstance(value, list) else str(value)


def points_of(spec: str, model: str = f'{ABLATION_MODEL}_imachsr') -> list[str]:
    """The names a points rule (``zoo.select_points``) selects on ``model``."""
    import zoo
    return [p['name'] for p in zoo.create_model(model, num_classes=11).backbone.select_points(spec)]


def plan(group: str) -> list[Run]:
    imachsr = f'{ABLATION_MODEL}_imachsr'
    if group == 'search':
        return [Run(imachsr, overrides=head_set(imachsr, points=SEARCH_POINTS, **changes)) for changes in SEARCH]
    if group == 'ablation':
        return _unique([ablation_run(spec) for specs in ABLATIONS.values() for spec in specs])
    if group == 'main':
        return [Run(family + variant, seed, head_set(family + variant))
                for family in EPOCHS for seed in SEEDS.get(family, (0,)) for variant in VARIANTS]
    raise ValueError(f'unknown group {group!r}: search, ablation or main')


def ablation_run(spec: str) -> Run:
    recipe = f'{ABLATION_MODEL}_imachsr'
    return Run(recipe, overrides=head_set(recipe, points=points_of(spec), **ABLATION_WEIGHTS))


def head_set(recipe: str, **changes: Any) -> dict[str, Any]:
    """The head set of a recipe with ``changes``, spelled out (points as names), so that a run is
    named by what it trains: {} for a baseline."""
    from zoo.engine.config import read_recipe
    values = {k: v for k, v in read_recipe(RECIPES / f'{recipe}.yaml').items() if k in ('points', 'alpha', 'beta')}
    values.update(changes)
    if isinstance(values.get('points'), str):
        values['points'] = points_of(values['points'], recipe)
    return values


def _unique(runs: list[Run]) -> list[Run]:
    return list({run.name: run for run in runs}.values())


def train_and_score(run: Run) -> str:
    """Train ``run`` (resuming) and score its last checkpoint with ``zoo eval`` on val."""
    if run.result() is not None:
        return f'{run.name}: done'
    run.dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    log_path = run.dir / 'train.log'
    try:
        with open(log_path, 'a') as log:
            subprocess.run([sys.executable, __file__, 'train-one', run.name], env=env, stdout=log, stderr=log,
                           check=True, cwd=REPO)
            checkpoint = max(run.dir.glob('checkpoint-*.pt'))
            subprocess.run([sys.executable, '-m', 'zoo', 'eval', '--checkpoint', str(checkpoint), '--data', 'camvid',
                            '--root', str(DATA_ROOT), '--split', 'val', '--workers', '0', '--device', 'cpu',
                            '--report', str(run.dir / 'eval_val.json')], env=env, stdout=log, stderr=log,
                           check=True, cwd=REPO)
    except subprocess.CalledProcessError as error:
        return f'{run.name}: FAILED ({error}); see {log_path}'
    return f'{run.name}: val mIoU {run.result()["mIoU"]:.2f}'


def _train_one(name: str) -> None:
    import torch
    from zoo.engine import train
    torch.set_num_threads(1)
    run = next(r for g in ('search', 'ablation', 'main') for r in plan(g) if r.name == name)
    train(run.config(), resume=True if any(run.dir.glob('checkpoint-*.pt')) else None)


# ---------------------------------------------------------------------------------------------
# Tables, plots and published weights


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def _row(cells: list[Any]) -> str:
    return '| ' + ' | '.join(map(str, cells)) + ' |'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return '\n'.join([_row(header), _row(['---'] * len(header)), *map(_row, rows)])


def _scored(runs: list[Run]) -> list[tuple[Run, dict]]:
    return [(run, result) for run in runs if (result := run.result()) is not None]


def main_table() -> str:
    """Rows model x variant: val metrics as mean ± std over the scored seeds, beside the paper."""
    rows = []
    by_recipe: dict[str, list[dict]] = {}
    for run, result in _scored(plan('main')):
        by_recipe.setdefault(run.recipe, []).append(result)
    for family in EPOCHS:
        paper = next((v for k, v in PAPER.items() if family.startswith(k)), None)
        for variant in VARIANTS:
            results = by_recipe.get(family + variant)
            if not results:
                continue
            cells = [_mean_std([r[m] for r in results]) for m in METRICS]
            reference = {'': f'{paper[0]:.2f}', '_imachsr': f'{paper[1]:.2f}'}.get(variant, '') if paper else ''
            rows.append([f'`{family + variant}`', len(results), *cells, reference])
    return _table(['model', 'seeds', *(f'val {m}' for m in METRICS), 'paper mIoU (600/101 split)'], rows)


def search_table() -> str:
    rows = [[run.overrides['alpha'], run.overrides['beta'], ', '.join(run.overrides['points']),
             *(f'{result[m]:.2f}' for m in METRICS)] for run, result in _scored(plan('search'))]
    return _table(['alpha', 'beta', 'points', *(f'val {m}' for m in METRICS)], rows)


def ablation_series() -> dict[str, list[tuple[str, list[str], Optional[dict]]]]:
    """Each ablation's settings in order: (label, points, val result or None)."""
    series = {}
    for study, specs in ABLATIONS.items():
        entries = []
        for spec in specs:
            run = ablation_run(spec)
            label = spec if study == 'position' else spec.split(':')[-1]  # K of uniform:K, D of central:3:D
            entries.append((label, run.overrides['points'], run.result()))
        series[study] = entries
    return series


def ablation_tables() -> str:
    titles = {'points': 'points K (uniform:K)', 'distance': 'distance D (3 points, centred)',
              'position': 'position:K'}
    out = []
    for study, entries in ablation_series().items():
        rows = [[label, ', '.join(points), *(f'{r[m]:.2f}' if r else 'not run' for m in METRICS)]
                for label, points, r in entries]
        out.append(f'**{titles[study]}**\n\n' + _table([titles[study], 'points', *METRICS], rows))
    return '\n\n'.join(out)


def ablation_plots(folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    baseline = [r['mIoU'] for run, r in _scored(plan('main')) if run.recipe == ABLATION_MODEL and run.seed == 0]
    written = []
    for study, entries in ablation_series().items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        if study == 'position':
            for where in ('input', 'central', 'output'):
                points = [(int(label.split(':')[1]), r['mIoU']) for label, _, r in entries
                          if label.startswith(where) and r]
                if points:
                    ax.plot(*zip(*points), marker='o', label=where)
            ax.set_xlabel('points K')
        else:
            points = [(int(label), r['mIoU']) for label, _, r in entries if r]
            if points:
                ax.plot(*zip(*points), marker='o', label='iMacHSR')
            ax.set_xlabel({'points': 'points K (uniform)', 'distance': 'distance D between 3 points'}[study])
        if baseline:
            ax.axhline(baseline[0], color='grey', linestyle='--', label='baseline (seed 0)')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel('CamVid val mIoU (%)')
        ax.set_title(f'{ABLATION_MODEL}: {study}')
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f'ablation_{study}.png'
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def report() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = _unique([run for group in ('search', 'ablation', 'main') for run in plan(group)])
    records = [{'run': run.name, 'recipe': run.recipe, 'seed': run.seed, 'overrides': run.overrides,
                'epochs': EPOCHS[run.family], **{m: result[m] for m in ('aAcc', *METRICS)}}
               for run, result in _scored(runs)]
    (RESULTS / 'runs.json').write_text(json.dumps({'schedule': CPU_SCHEDULE, 'runs': records}, indent=2) + '\n')
    tables = (f'## Results (CamVid val)\n\n{main_table()}\n\n## Search (topformer_tiny_imachsr, seed 0)\n\n'
              f'{search_table()}\n\n## Ablations (topformer_tiny_imachsr, seed 0)\n\n{ablation_tables()}\n')
    (RESULTS / 'tables.md').write_text(tables)
    plots = ablation_plots(RESULTS)
    print(tables)
    print(f'{len(records)} scored runs: {RESULTS / "runs.json"}, {RESULTS / "tables.md"}, '
          + ', '.join(p.name for p in plots))


# fp16 weights of every (model, variant) would take 175 MB; weights/ holds at most 150 MB, so the
# DeepLabv3+ baseline and _ds weights (25 MB each) stay out: their rows of the table still stand.
NOT_PUBLISHED = ('deeplabv3plus_resnet18', 'deeplabv3plus_resnet18_ds')
WEIGHTS = REPO / 'weights'
WEIGHTS_INDEX_HEAD = """# Published weights

One Hub-format folder per weight (`<arch>.<tag>/`: `config.json`, `model.safetensors` in float16,
`README.md` model card), written by `python references/camvid/experiments.py export`: the best
seed of each CamVid run of the README's results table, scored by `zoo eval` on CamVid val.
`zoo.create_model('<arch>.camvid', pretrained=True)` checks the sha256 below.
"""


CARD_NOTES = ('Trained from scratch on 2 CPU cores, on a schedule of under 1% of the recipe\'s (192x256 '
              'crops, a few epochs): far from converged. See the project README, Results (CamVid), for the '
              'schedule, the other seeds and the comparison with the baseline and classic deep supervision.')


def export() -> None:
    """The best seed of each (model, variant) as ``weights/<recipe>.camvid`` (fp16), with the card's
    numbers from ``zoo eval`` of that very folder; prints the ``default_cfgs`` entries."""
    import torch
    from zoo._pretrained import CAMVID_CLASSES, CAMVID_PALETTE
    from zoo.engine.checkpoint import model_from_checkpoint
    from zoo.hub import save_pretrained, sha256_of

    best: dict[str, tuple[Run, dict]] = {}
    for run, result in _scored(plan('main')):
        if run.recipe not in NOT_PUBLISHED and result['mIoU'] > best.get(run.recipe, (None, {'mIoU': -1}))[1]['mIoU']:
            best[run.recipe] = (run, result)
    index = []
    for recipe, (run, _) in best.items():
        model = model_from_checkpoint(max(run.dir.glob('checkpoint-*.pt'))).eval()
        recipe_values = {k: v for k, v in run.config().to_dict().items() if k != 'run_dir'}
        recipe_values['root'] = '../shared/datasets/camvid'
        fields = dict(tag='camvid', dataset='camvid', split='val', label_names=list(CAMVID_CLASSES),
                      palette=[list(c) for c in CAMVID_PALETTE], input_size=[3, 360, 480], notes=CARD_NOTES,
                      recipe={'file': f'configs/camvid/{recipe}.yaml', 'run': run.name, **recipe_values})
        folder = WEIGHTS / f'{recipe}.camvid'
        save_pretrained(model, folder, dtype=torch.float16, **fields)
        report = RUNS / 'export' / f'{recipe}.camvid.json'
        report.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'zoo', 'eval', '--checkpoint', str(folder), '--data', 'camvid',
                        '--root', str(DATA_ROOT), '--split', 'val', '--workers', '0', '--device', 'cpu',
                        '--report', str(report)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        scored = next(iter(json.loads(report.read_text())['models'].values()))
        metrics = {m: round(scored[m], 4) for m in ('aAcc', *METRICS)}
        save_pretrained(model, folder, dtype=torch.float16, metrics=metrics, **fields)
        sha = sha256_of(folder / 'model.safetensors')
        size = (folder / 'model.safetensors').stat().st_size / 2 ** 20
        index.append((f'{recipe}.camvid', run.seed, metrics['mIoU'], size, sha))
        print(f"    camvid_cfg('{recipe}', '{sha}',\n               {metrics!r}),")
    lines = [WEIGHTS_INDEX_HEAD, '| weight | best seed | val mIoU | MB | sha256 |', '|---|---|---|---|---|']
    lines += [f'| `{name}` | {seed} | {miou:.2f} | {size:.1f} | `{sha}` |' for name, seed, miou, size, sha in index]
    (WEIGHTS / 'README.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    train = commands.add_parser('train', help='train and score the runs of groups')
    train.add_argument('groups', nargs='+', choices=('search', 'ablation', 'main'))
    train.add_argument('--jobs', type=int, default=2, help='runs at once (one thread each)')
    train.add_argument('--dry-run', action='store_true', help='list the runs only')
    commands.add_parser('export', help='best seeds to weights/ (fp16), scored by zoo eval')
    commands.add_parser('report', help='tables (markdown), plots and runs.json in references/camvid/results')
    one = commands.add_parser('train-one')
    one.add_argument('name')
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.command == 'train-one':
        _train_one(args.name)
        return 0
    if args.command in ('report', 'export'):
        {'report': report, 'export': export}[args.command]()
        return 0
    runs = _unique([run for group in args.groups for run in plan(group)])
    if args.dry_run:
        print('\n'.join(f'{run.name}{"  (scored)" if run.result() else ""}' for run in runs))
        return 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for message in pool.map(train_and_score, runs):
            print(message, flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
