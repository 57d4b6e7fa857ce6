"""The published CamVid weights: registered, present in weights/, loadable offline from a clone
(create_model, torch.hub), with model cards that agree with the registry; ``zoo demo`` uses them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo._registry import get_pretrained_cfg
from zoo.hub import REPO_WEIGHTS_DIR, sha256_of

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = zoo.list_pretrained('*.camvid')
CAMVID_ROOT = Path(os.environ.get('ZOO_CAMVID_ROOT', ROOT.parent / 'shared' / 'datasets' / 'camvid'))


def test_topformer_and_seaformer_weights_are_published_for_every_variant():
    for family in ('topformer_tiny', 'topformer_base', 'seaformer_tiny', 'seaformer_base'):
        for variant in ('', '_ds', '_imachsr'):
            assert f'{family}{variant}.camvid' in PUBLISHED
    assert 'deeplabv3plus_resnet18_imachsr.camvid' in PUBLISHED


def test_weights_folder_stays_under_150_mb():
    size = sum(path.stat().st_size for path in REPO_WEIGHTS_DIR.rglob('*') if path.is_file())
    assert size < 150 * 2 ** 20


@pytest.mark.parametrize('name', PUBLISHED)
def test_registry_card_and_file_agree(name):
    cfg = get_pretrained_cfg(name)
    folder = REPO_WEIGHTS_DIR / name
    config = json.loads((folder / 'config.json').read_text())
    assert config['sha256'] == cfg.sha256 == sha256_of(folder / 'model.safetensors')
    assert config['metrics'] == cfg.metrics and config['architecture'] == cfg.architecture
    assert (config['dataset'], config['split'], config['num_classes']) == ('camvid', 'val', 11)
    card = (folder / 'README.md').read_text()
    assert f'| mIoU | {cfg.metrics["mIoU"]:.2f} |' in card
    assert f'zoo eval --model {name} --data camvid' in card


def test_topformer_imachsr_pretrained_is_the_trained_base_model():
    model = zoo.create_model('topformer_imachsr', pretrained=True)
    assert model.architecture == 'topformer_base_imachsr' and model.num_classes == 11
    assert model.pretrained_cfg['metrics'] == get_pretrained_cfg('topformer_base_imachsr.camvid').metrics
    stored = load_file(str(REPO_WEIGHTS_DIR / 'topformer_base_imachsr.camvid' / 'model.safetensors'))
    state = model.state_dict()
    assert stored.keys() == state.keys()
    for key, value in stored.items():  # fp16 on disk, upcast on load
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_torch_hub_local_pretrained():
    model = torch.hub.load(str(ROOT), 'topformer_imachsr', source='local', pretrained=True, trust_repo=True)
    assert model.architecture == 'topformer_base_imachsr'
    assert model.pretrained_cfg['tag'] == 'camvid'


def test_demo_scores_the_sample_and_writes_the_panel(tmp_path):
    out = tmp_path / 'panel.png'
    result = subprocess.run([sys.executable, '-m', 'zoo', 'demo', '--frames', '2', '--out', str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('mIoU') >= 2 and 'topformer_base.camvid' in result.stdout
    panel = cv2.imread(str(out))
    assert panel is not None and panel.shape[1] > 4 * 480  # image | truth | baseline | iMacHSR


@pytest.mark.slow
@pytest.mark.parametrize('name', PUBLISHED)
def test_zoo_eval_reproduces_the_card_on_camvid_val(name, tmp_path):
    if not (CAMVID_ROOT / 'val').is_dir():
        pytest.skip(f'CamVid is not at {CAMVID_ROOT} (set ZOO_CAMVID_ROOT)')
    from zoo.cli import main
    report = tmp_path / 'report.json'
    assert main(['eval', '--model', name, '--data', 'camvid', '--root', str(CAMVID_ROOT), '--workers', '0',
                 '--report', str(report)]) == 0
    scored = json.loads(report.read_text())['models'][name]
    card = get_pretrained_cfg(name).metrics
    assert {k: round(scored[k], 2) for k in card} == {k: round(v, 2) for k, v in card.items()}
