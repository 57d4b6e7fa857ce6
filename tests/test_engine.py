"""zoo.engine: config, optimiser, schedule, data order, non-finite losses, eval/predict/plot CLI."""
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from zoo.cli import build_parser, main
from zoo.engine import (InferenceCfg, NonFiniteLossError, TrainConfig, model_from_checkpoint, param_groups,
                        poly_warmup, predict_probs, read_checkpoint, train)
from zoo.engine.config import config_from_args
from zoo.engine.train import EpochSampler, SeededAugmentation, median_frequency_weights
from zoo.imachsr import IMacHSRLoss

MODEL = 'topformer_tiny_imachsr'


def make_camvid(root: Path, train: int = 8, val: int = 2, size=(48, 64), seed: int = 0) -> Path:
    """A CamVid-layout folder of noise frames whose labels are blocks of the 11 classes and void (11)."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train), ('val', val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f'{split}annot').mkdir(exist_ok=True)
        for i in range(count):
            blocks = rng.integers(0, 12, (size[0] // 8, size[1] // 8), dtype=np.uint8)
            label = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
            image = (rng.integers(0, 64, (*size, 3)) + label[..., None] * 16).astype(np.uint8)
            cv2.imwrite(str(root / split / f'f{i:03d}.png'), image)
            cv2.imwrite(str(root / f'{split}annot' / f'f{i:03d}.png'), label)
    return root


def tiny_config(root: Path, run_dir: Path, **overrides) -> TrainConfig:
    values = dict(model=MODEL, root=str(root), crop_size=(32, 32), scale_range=(0.75, 1.25), batch_size=2, iters=3,
                  workers=0, log_interval=1, ckpt_interval=1, val_split=None, run_dir=str(run_dir), lr=1e-3)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope='module')
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp('camvid'))


@pytest.fixture(scope='module')
def trained(camvid, tmp_path_factory):
    """A three-step run validated on the fixture's val split."""
    run_dir = tmp_path_factory.mktemp('run') / 'run'
    result = train(tiny_config(camvid, run_dir, val_split='val', keep_last=2))
    return result


# ---------------------------------------------------------------------------------------------
# Config


def test_yaml_recipe_with_overrides(tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model: deeplabv3plus_imachsr\nroot: /data\nepochs: 3\ncrop_size: [64, 96]\n'
                      'alpha: {layer1: 1.0}\n')
    cfg = TrainConfig.from_yaml(recipe, lr=0.01, iters=7)
    assert (cfg.model, cfg.lr, cfg.iters, cfg.epochs) == ('deeplabv3plus_imachsr', 0.01, 7, None)
    assert cfg.crop_size == (64, 96)
    assert cfg.head_set_kwargs() == {'alpha': {'layer1': 1.0}}
    assert cfg.run_dir == 'runs/deeplabv3plus_imachsr'
    cfg.to_yaml(tmp_path / 'again.yaml')
    assert TrainConfig.from_yaml(tmp_path / 'again.yaml') == cfg


def test_recipe_inherits_its_base(tmp_path):
    (tmp_path / 'common').mkdir()
    (tmp_path / 'common' / 'base.yaml').write_text('root: /data\nepochs: 3\nlr: 0.01\nbatch_size: 4\n')
    recipe = tmp_path / 'model.yaml'
    recipe.write_text('_base_: common/base.yaml\nmodel: topformer_tiny_ds\nlr: 0.002\n')
    cfg = TrainConfig.from_yaml(recipe, batch_size=2)
    assert (cfg.model, cfg.root, cfg.epochs, cfg.lr, cfg.batch_size) == ('topformer_tiny_ds', '/data', 3, 0.002, 2)


@pytest.mark.parametrize('base, message', [
    ('missing.yaml', r'missing.yaml does not exist \(the _base_ of .*recipe.yaml\)'),
    ('recipe.yaml', 'makes a cycle'),
    ('[a, b]', '_base_ must be a file path'),
])
def test_bad_base_is_named(tmp_path, base, message):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(f'_base_: {base}\nroot: x\niters: 1\n')
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        TrainConfig.from_yaml(recipe)


def test_camvid_recipes_differ_only_in_model_and_head_set():
    """configs/camvid: for each model, baseline, _ds and _imachsr train identically but for the head set."""
    recipes = sorted((Path(__file__).parents[1] / 'configs' / 'camvid').glob('[!_]*.yaml'))
    assert len(recipes) == 15
    head_set = {'model', 'points', 'alpha', 'beta', 'ne_on'}
    configs = {path.stem: TrainConfig.from_yaml(path).to_dict() for path in recipes}
    reference = configs['topformer_tiny']
    for name, values in configs.items():
        assert values['model'] == name
        assert {k: v for k, v in values.items() if k not in head_set | {'run_dir'}} == \
            {k: v for k, v in reference.items() if k not in head_set | {'run_dir'}}, name
        family = name.removesuffix('_imachsr').removesuffix('_ds')
        if name.endswith(('_ds', '_imachsr')):
            other = configs[family + ('_imachsr' if name.endswith('_ds') else '_ds')]
            assert (values['points'], values['alpha']) == (other['points'], other['alpha']), name
        else:
            assert values['points'] is values['alpha'] is values['beta'] is None


@pytest.mark.parametrize('text, message', [
    ('root: x\niters: 1\nlrr: 0.1\n', r"unknown key\(s\) \['lrr'\]"),
    ('root: x\niters: 1\noptimizer: adamx\n', "optimizer: 'adamx' is not one of adam, adamw, sgd"),
    ('root: x\niters: 1\nbatch_size: two\n', "batch_size: 'two' is not a int"),
    ('root: x\niters: 1\ncrop_size: [64]\n', r'crop_size: \[64\] is not a list of 2 values'),
    ('root: x\niters: 0\n', 'iters must be at least 1, got 0'),
    ('root: x\niters: 1\nepochs: 2\n', 'give exactly one of iters and epochs'),
    ('iters: 1\n', 'root is not set'),
    ('- a list\n', 'expected a mapping'),
])
def test_bad_recipes_name_the_file_key_and_value(tmp_path, text, message):
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig.from_yaml(recipe)
    assert str(recipe) in str(error.value)


def test_command_line_overrides_the_recipe(tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('root: /data\nepochs: 2\ndeterministic: true\nlr: 0.1\n')
    args = build_parser().parse_args([
        'train', '--config', str(recipe), '--lr', '1e-3', '--crop-size', '32', '48', '--alpha', '{tpm.3: 1.0}',
        '--no-deterministic', '--points', '[tpm.3, tpm.5]', '--grad-clip', '1', '--resume'])
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.crop_size, cfg.alpha, cfg.deterministic, cfg.points, cfg.grad_clip, cfg.epochs) == (
        1e-3, (32, 48), {'tpm.3': 1.0}, False, ['tpm.3', 'tpm.5'], 1.0, 2)
    assert args.resume is True


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.local_embedding = nn.Conv2d(3, 4, 3)   # a conv weight: decayed despite its module's name
        self.norm = nn.BatchNorm2d(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.fc = nn.Linear(4, 2)


def test_no_weight_decay_on_norms_biases_and_positional_embeddings():
    model = _Toy()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.05)
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0
    assert sorted(names[id(p)] for p in decay['params']) == ['fc.weight', 'local_embedding.weight']
    assert sorted(names[id(p)] for p in no_decay['params']) == [
        'cls_token', 'fc.bias', 'local_embedding.bias', 'norm.bias', 'norm.weight', 'pos_embed']


def test_poly_schedule_with_linear_warmup(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path, iters=100, lr=0.01, warmup_iters=10, warmup_ratio=0.1,
                      poly_power=0.9, min_lr=1e-4)
    factor = poly_warmup(cfg, 100)
    poly = lambda t: (1 - 0.01) * (1 - t / 100) ** 0.9 + 0.01  # noqa: E731  (min_lr / lr = 0.01)
    assert factor(0) == pytest.approx(0.1 * poly(0))
    assert factor(5) == pytest.approx((0.1 + 0.9 * 0.5) * poly(5))
    assert factor(10) == pytest.approx(poly(10))
    assert factor(100) == pytest.approx(0.01)
    assert all(factor(t) > factor(t + 1) for t in range(10, 100))


# ---------------------------------------------------------------------------------------------
# Data order and augmentation


def test_sampler_shards_an_epoch_and_resumes_mid_epoch():
    data = list(range(10))
    shards = [EpochSampler(data, 2, rank, seed=3) for rank in (0, 1)]
    for shard in shards:
        shard.set_position(4)
    keys = [list(shard) for shard in shards]
    assert {epoch for part in keys for epoch, _ in part} == {4}
    assert sorted(i for part in keys for _, i in part) == data
    again = EpochSampler(data, 2, 0, seed=3)
    again.set_position(4, skip=3)
    assert list(again) == keys[0][3:] and len(again) == 2
    again.set_position(5)
    assert list(again) != keys[0]


def test_augmentation_depends_on_seed_epoch_and_index_only(camvid):
    from zoo.data import build_transforms, create_dataset
    dataset = SeededAugmentation(create_dataset('camvid', camvid, 'train'), build_transforms(True, (32, 32)), seed=1)
    first = dataset[(0, 2)]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    dataset[(0, 5)]
    again = dataset[(0, 2)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], dataset[(1, 2)][0])
    assert first[1].dtype == torch.int64


def test_median_frequency_weights_match_a_direct_count(camvid):
    from zoo.data import create_dataset
    dataset = create_dataset('camvid', camvid, 'train')
    labels = [dataset.load_pair(i)[1] for i in range(len(dataset))]
    freq = []
    for c in range(11):
        pixels = sum((label == c).sum() for label in labels)
        exposure = sum((label != 255).sum() for label in labels if (label == c).any())
        freq.append(pixels / exposure)
    expected = np.median(freq) / np.array(freq)
    np.testing.assert_allclose(median_frequency_weights(dataset).numpy(), expected, rtol=1e-5)


def test_options_sgd_bf16_channels_last_clipping_class_weights(camvid, tmp_path):
    cfg = tiny_config(camvid, tmp_path / 'run', model='deeplabv3plus_imachsr', optimizer='sgd', weight_decay=1e-4,
                      amp='bf16', channels_last=True, grad_clip=1.0, class_weight='median_freq', warmup_iters=2,
                      points='uniform:2', alpha=0.5, beta={'layer3': 0.0}, iters=2, ckpt_interval=5)
    result = train(cfg)
    supervision = result.model.supervision
    assert supervision.points == ['layer1', 'layer3'] and supervision.beta == {'layer1': 0.1, 'layer3': 0.0}
    assert set(supervision.alpha.values()) == {0.5}
    state = read_checkpoint(tmp_path / 'run' / 'checkpoint-0000002.pt')
    assert state['class_weight'].shape == (11,) and state['optimizer']['param_groups'][0]['momentum'] == 0.9
    assert state['model_config']['model_args']['alpha'] == 0.5
    assert state['model_config']['label_names'][0] == 'Sky' and state['model_config']['recipe']['optimizer'] == 'sgd'


def test_a_run_folder_is_never_overwritten_and_resumes_with_its_own_settings(camvid, tmp_path):
    train(tiny_config(camvid, tmp_path / 'run', iters=1))
    with pytest.raises(ValueError, match='already holds checkpoints: pass --resume'):
        train(tiny_config(camvid, tmp_path / 'run', iters=1))
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in lr \(0.001 there, 0.01 now\)"):
        train(tiny_config(camvid, tmp_path / 'run', iters=1, lr=0.01), resume=True)
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        train(tiny_config(camvid, tmp_path / 'other', iters=2), resume=True)
    (tmp_path / 'run').rename(tmp_path / 'moved')  # a run folder may move
    assert train(tiny_config(camvid, tmp_path / 'moved', iters=1), resume=True).step == 1


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def _poison(monkeypatch, at_call: int, term: str):
    calls = {'n': 0}
    forward = IMacHSRLoss.forward

    def poisoned(self, output, target):
        terms = forward(self, output, target)
        calls['n'] += 1
        if calls['n'] == at_call:
            terms[term] = terms[term] * math.nan
            terms['loss'] = terms['loss'] + terms[term]
        return terms
    monkeypatch.setattr(IMacHSRLoss, 'forward', poisoned)


def test_nonfinite_loss_stops_naming_term_and_step(camvid, tmp_path, monkeypatch):
    _poison(monkeypatch, at_call=2, term='tpm.8.loss_mi')
    with pytest.raises(NonFiniteLossError, match=r'step 2: non-finite loss term\(s\) tpm.8.loss_mi = nan, loss = nan'):
        train(tiny_config(camvid, tmp_path / 'run'))
    assert sorted(p.name for p in (tmp_path / 'run').glob('*.pt')) == ['checkpoint-0000001.pt']
    state = read_checkpoint(tmp_path / 'run' / 'checkpoint-0000001.pt')
    assert state['step'] == 1 and all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_skip_nonfinite_skips_the_step_and_goes_on(camvid, tmp_path, monkeypatch, caplog):
    _poison(monkeypatch, at_call=2, term='loss_ce')
    result = train(tiny_config(camvid, tmp_path / 'run', skip_nonfinite=True))
    assert result.step == 3
    assert 'step 2: non-finite loss term(s) loss_ce = nan' in caplog.text and 'skipped' in caplog.text
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# ---------------------------------------------------------------------------------------------
# Inference, evaluation, prediction, plots


def test_sliding_window_and_tta_agree_with_whole_image(trained):
    model = trained.model.eval()
    images = torch.randn(2, 3, 40, 56)
    whole = predict_probs(model, images)['output']
    covering = predict_probs(model, images, InferenceCfg('slide', crop_size=(64, 64)))['output']
    torch.testing.assert_close(covering, whole)
    windows = predict_probs(model, images, InferenceCfg('slide', crop_size=(32, 32), stride=(16, 16)))['output']
    assert windows.shape == whole.shape
    torch.testing.assert_close(windows.sum(1), torch.ones(2, 40, 56))
    flipped = predict_probs(model, images.flip(-1), InferenceCfg(flip=True))['output']
    torch.testing.assert_close(flipped.flip(-1), predict_probs(model, images, InferenceCfg(flip=True))['output'])


def test_per_head_probabilities_at_image_size_in_eval_mode(trained):
    model = trained.model.eval()
    probs = predict_probs(model, torch.randn(1, 3, 40, 56), heads=True)
    assert list(probs) == ['output', *model.heads.points]
    assert all(p.shape == (1, 11, 40, 56) for p in probs.values())
    assert not model.training and not any(m.training for m in model.modules())


def test_eval_reproduces_the_training_validation(trained, camvid, tmp_path, capsys):
    checkpoint = trained.run_dir / 'checkpoint-0000003.pt'
    report_path = tmp_path / 'report.json'
    assert main(['eval', '--checkpoint', str(checkpoint), '--data', 'camvid', '--root', str(camvid),
                 '--split', 'val', '--per-head', '--workers', '0', '--batch-size', '2', '--report', str(report_path),
                 '--save-vis', str(tmp_path / 'vis'), '--confusion', str(tmp_path / 'cm.png')]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ('aAcc', 'mIoU', 'mF1', 'mPrecision', 'mRecall', 'Bicyclist', 'majority'))
    report = json.loads(report_path.read_text())
    result = report['models'][MODEL]
    assert result['mIoU'] == pytest.approx(trained.val['mIoU'], abs=1e-9)
    assert result['aAcc'] == pytest.approx(trained.val['aAcc'], abs=1e-9)
    assert set(result['heads']) == set(trained.model.heads.points) and 'majority' in result['heads_note']
    assert len(result['heads']['tpm.6']['mapping']) == 11
    assert sorted(p.name for p in (tmp_path / 'vis').iterdir()) == ['0000.png', '0001.png']
    panel = cv2.imread(str(tmp_path / 'vis' / '0000.png'))
    assert panel.shape[1] == 3 * 64 + 2 * 4     # image | ground truth | model
    assert (tmp_path / 'cm.png').stat().st_size > 0


def test_eval_rejects_a_model_of_other_classes(camvid, tmp_path, capsys):
    folder = tmp_path / 'weights'
    import zoo
    zoo.create_model('topformer_tiny', num_classes=5).save_pretrained(folder)
    assert main(['eval', '--checkpoint', str(folder), '--data', 'camvid', '--root', str(camvid), '--workers', '0',
                 '--report', str(tmp_path / 'r.json')]) == 2
    assert 'predicts 5 classes; camvid has 11' in capsys.readouterr().err


def test_predict_writes_masks_and_overlays(trained, camvid, tmp_path):
    checkpoint = trained.run_dir / 'checkpoint-0000003.pt'
    assert main(['predict', '--checkpoint', str(checkpoint), str(camvid / 'val'), '--out', str(tmp_path),
                 '--mode', 'slide', '--crop-size', '32', '32']) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'f000_mask.png', 'f000_overlay.png', 'f001_mask.png', 'f001_overlay.png']
    mask = cv2.cvtColor(cv2.imread(str(tmp_path / 'f000_mask.png')), cv2.COLOR_BGR2RGB)
    palette = {tuple(c) for c in model_from_checkpoint(checkpoint).pretrained_cfg['palette']}
    assert {tuple(c) for c in mask.reshape(-1, 3).tolist()} <= palette


def test_plot_draws_the_curves(trained, tmp_path):
    out = tmp_path / 'curves.png'
    assert main(['plot', str(trained.run_dir), '--out', str(out)]) == 0
    assert cv2.imread(str(out)) is not None


def test_plot_names_a_folder_without_a_log(tmp_path, capsys):
    assert main(['plot', str(tmp_path)]) == 2
    assert 'metrics.jsonl does not exist' in capsys.readouterr().err
