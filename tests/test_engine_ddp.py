"""Two CPU processes under torchrun (gloo) train in step: both hold the same weights afterwards."""
import json
import os
import subprocess
import sys

import torch
from torch.utils.data import DataLoader

from zoo.data import CAMVID_CLASSES, build_transforms, create_dataset
from zoo.engine import evaluate, model_from_checkpoint
from zoo.engine.evaluate import collate_list

from test_engine import make_camvid

SCRIPT = '''
import os
import sys

import torch
from zoo.engine import TrainConfig, train

root, run_dir, out = sys.argv[1:4]
cfg = TrainConfig(model='topformer_tiny_imachsr', root=root, crop_size=(32, 32), batch_size=2, iters=4, workers=0,
                  log_interval=2, ckpt_interval=2, val_split='val', run_dir=run_dir, seed=5)
result = train(cfg)
torch.save({'model': result.model.state_dict(), 'val': result.val}, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
'''


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    camvid = make_camvid(tmp_path / 'camvid')
    script = tmp_path / 'ddp_train.py'
    script.write_text(SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
               str(camvid), str(tmp_path / 'run'), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]['model'].items():
        assert torch.equal(value, ranks[1]['model'][key]), key      # parameters and BatchNorm statistics
    assert json.dumps(ranks[0]['val']) == json.dumps(ranks[1]['val'])  # validation gathered from both shards (NaN too)
    # rank 0 alone writes, and its last checkpoint holds the same weights
    run = tmp_path / 'run'
    assert sorted(p.name for p in run.iterdir()) == [
        'best.pt', 'checkpoint-0000002.pt', 'checkpoint-0000004.pt', 'config.yaml', 'metrics.jsonl']
    saved = torch.load(run / 'checkpoint-0000004.pt', weights_only=True)
    assert all(torch.equal(v, ranks[0]['model'][k]) for k, v in saved['model'].items())
    matrix = evaluate({'m': model_from_checkpoint(run / 'checkpoint-0000004.pt', saved)},
                      DataLoader(create_dataset('camvid', camvid, 'val', transform=build_transforms(False)),
                                 collate_fn=collate_list), 11)['m']['output']
    assert json.dumps(matrix.compute(list(CAMVID_CLASSES))) == json.dumps(ranks[0]['val'])  # each image once
    assert len(saved['rng']) == 2                                    # every rank's generators, for --resume
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records if r['kind'] == 'train'] == [2, 4]
    assert {'loss_ce', 'tpm.6.loss_mi', 'tpm.6.loss_ne', 'loss'} <= set(records[0])
