"""A run killed after a checkpoint and resumed ends with the weights of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from test_engine import make_camvid, tiny_config

STEPS = 12


def _launch(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen([sys.executable, '-m', 'zoo', 'train', '--config', str(config), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _recipe(tmp_path: Path, camvid: Path, name: str) -> Path:
    cfg = tiny_config(camvid, tmp_path / name, iters=STEPS, ckpt_interval=2, keep_last=2, deterministic=True,
                      workers=1)
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _train_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != 'images_per_s'} for r in records]


def assert_same(ours, theirs, where: str) -> None:
    assert type(ours) is type(theirs), where
    if isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs), where
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_same(ours[key], theirs[key], f'{where}.{key}')
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f'{where}[{i}]')
    else:
        assert ours == theirs, where


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    camvid = make_camvid(tmp_path / 'camvid')
    reference = _launch(_recipe(tmp_path, camvid, 'reference'))      # runs alongside the killed one
    killed_recipe = _recipe(tmp_path, camvid, 'killed')
    killed = _launch(killed_recipe)
    first = tmp_path / 'killed' / 'checkpoint-0000002.pt'
    deadline = time.monotonic() + 50
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, f'the run ended before it could be killed: {killed.stderr.read()}'
    written = sorted(p.name for p in (tmp_path / 'killed').glob('checkpoint-*.pt'))
    assert written and f'checkpoint-{STEPS:07d}.pt' not in written

    resumed = _launch(killed_recipe, '--resume')
    for process in (resumed, reference):
        assert process.wait(timeout=120) == 0, process.stderr.read()

    final = f'checkpoint-{STEPS:07d}.pt'
    ours = torch.load(tmp_path / 'killed' / final, weights_only=True)
    theirs = torch.load(tmp_path / 'reference' / final, weights_only=True)
    assert ours['step'] == theirs['step'] == STEPS
    for key in ('model', 'optimizer', 'scheduler', 'rng', 'epoch', 'batch'):
        assert_same(ours[key], theirs[key], key)
    # the log of the interrupted steps was replaced by the resumed run's: the same numbers
    assert _train_records(tmp_path / 'killed') == _train_records(tmp_path / 'reference')
    assert len(list((tmp_path / 'killed').glob('checkpoint-*.pt'))) == 2   # keep_last
