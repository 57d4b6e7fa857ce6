"""Weights: Hub-format folders, registered weights, the Hub cache offline, checks and publishing."""
import json
import logging
import shutil

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo import _registry
from zoo.cli import main
from zoo.hub import check_weight_folder, publish, resolve_weight_file, sha256_of
from zoo._pretrained import PretrainedCfg


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A weight of deeplabv3plus_resnet18_imachsr registered as '.test', stored in ZOO_WEIGHTS_DIR."""
    torch.manual_seed(0)
    model = zoo.create_model('deeplabv3plus_resnet18_imachsr', num_classes=4)
    folder = tmp_path / 'deeplabv3plus_resnet18_imachsr.test'
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / 'model.safetensors')
    cfg = PretrainedCfg(architecture='deeplabv3plus_resnet18_imachsr', tag='test', hf_hub_id='zoo-test/none',
                        sha256=sha256_of(folder / 'model.safetensors'), num_classes=4)
    monkeypatch.setitem(_registry._pretrained_cfgs, cfg.architecture, {'test': cfg})
    monkeypatch.setenv('ZOO_WEIGHTS_DIR', str(tmp_path))
    return model, cfg, folder


def test_pretrained_loads_the_local_weight(published):
    model, cfg, _ = published
    assert zoo.list_pretrained('*.test') == ['deeplabv3plus_resnet18_imachsr.test']
    loaded = zoo.create_model('deeplabv3plus_imachsr', pretrained=True)
    assert loaded.num_classes == 4 and loaded.pretrained_cfg['tag'] == 'test'
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_corrupt_weight_names_the_model_and_repo(published):
    _, cfg, folder = published
    data = (folder / 'model.safetensors').read_bytes()
    (folder / 'model.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r'deeplabv3plus_resnet18_imachsr\.test \(Hub repo zoo-test/none\): .* '
                                           r'does not match the recorded sha256'):
        resolve_weight_file(cfg)


def test_missing_weight_offline_says_where_to_put_it(published):
    _, cfg, folder = published
    (folder / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=r'model.safetensors of Hub repo zoo-test/none is neither cached nor '
                                                r'downloadable.*place it at'):
        zoo.create_model('deeplabv3plus_resnet18_imachsr.test', pretrained=True)


@pytest.fixture(scope='module')
def trained_folder(tmp_path_factory):
    """An iMacHSR model with non-trivial BN statistics, saved with card fields."""
    torch.manual_seed(1)
    model = zoo.create_model('deeplabv3plus_resnet18_imachsr', num_classes=5, points='layer1,layer2', alpha=0.7)
    model.train()
    model(torch.randn(2, 3, 64, 64))  # moves the BN running statistics away from their init
    folder = tmp_path_factory.mktemp('weights') / 'deeplabv3plus_resnet18_imachsr.unit'
    model.save_pretrained(folder, label_names=list('abcde'), dataset='camvid', split='val', tag='unit',
                          metrics={'mIoU': 41.5, 'mF1': 50.25, 'aAcc': 80.0}, notes='Trained for one step.')
    return model.eval(), folder


def _same_outputs(a, b, size=(1, 3, 72, 88)):
    image = torch.randn(*size)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(image), b(image), rtol=0, atol=0)


def test_folder_alone_rebuilds_the_identical_model(trained_folder):
    model, folder = trained_folder
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'deeplabv3plus_resnet18_imachsr' and config['num_classes'] == 5
    assert config['model_args'] == {'num_classes': 5, 'points': ['layer1', 'layer2'], 'alpha': 0.7}
    assert config['supervision']['alpha'] == {'layer1': 0.7, 'layer2': 0.7}
    assert config['sha256'] == sha256_of(folder / 'model.safetensors')
    for loaded in (zoo.from_pretrained(folder, strict=True), zoo.create_model(f'local-dir:{folder}')):
        assert loaded.pretrained_cfg['label_names'] == list('abcde')
        assert list(loaded.state_dict()) == list(model.state_dict())
        _same_outputs(model, loaded)
    card = huggingface_hub.ModelCard.load(folder / 'README.md')
    results = card.data.to_dict()['model-index'][0]['results'][0]
    assert {m['name']: m['value'] for m in results['metrics']} == {'mIoU': 41.5, 'mF1': 50.25, 'aAcc': 80.0}
    assert results['dataset']['split'] == 'val' and {'imachsr', 'deep-supervision'} <= set(card.data.tags)
    assert 'zoo eval --model deeplabv3plus_resnet18_imachsr.unit --data camvid' in card.text
    assert "imachsr at points ['layer1', 'layer2'], alpha 0.7, beta 0.1." in card.text
    assert '\nTrained for one step.\n' in card.text and config['notes'] == 'Trained for one step.'


def test_fp16_storage_upcasts(tmp_path, trained_folder):
    model, _ = trained_folder
    model.save_pretrained(tmp_path / 'half', dtype=torch.float16)
    loaded = zoo.from_pretrained(tmp_path / 'half')
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(image), loaded.eval()(image), rtol=0.05, atol=0.05)


def test_hub_cache_offline(tmp_path, monkeypatch, trained_folder):
    """A repo in the Hugging Face cache layout loads through hf_hub_download with HF_HUB_OFFLINE."""
    model, folder = trained_folder
    revision = 'a' * 40
    repo = tmp_path / 'models--zoo-test--deeplab'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(revision)
    shutil.copytree(folder, repo / 'snapshots' / revision)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    _same_outputs(model, zoo.create_model('hf-hub:zoo-test/deeplab'))
    _same_outputs(model, zoo.create_model(f'hf-hub:zoo-test/deeplab@{revision}'))
    with pytest.raises(FileNotFoundError, match='config.json of Hub repo zoo-test/other is neither cached'):
        zoo.create_model('hf-hub:zoo-test/other')


def test_fine_tuning_other_classes_skips_only_the_classifiers(trained_folder, caplog):
    model, folder = trained_folder
    with caplog.at_level(logging.WARNING, logger='zoo.hub'):
        tuned = zoo.from_pretrained(folder, num_classes=3)
    assert tuned.num_classes == 3 and tuned.decoder.classifier.out_channels == 3
    assert 'skipped classifiers of another num_classes (6)' in caplog.text  # decoder + 2 adapters, weight + bias
    torch.testing.assert_close(tuned.backbone.model.conv1.weight, model.backbone.model.conv1.weight)
    with pytest.raises(RuntimeError, match=r"strict load\): shape mismatch: \['decoder.classifier.bias"):
        zoo.from_pretrained(folder, num_classes=3, strict=True)


def test_imachsr_weight_into_baseline_drops_heads_knowingly(tmp_path, trained_folder, caplog):
    model, folder = trained_folder
    with caplog.at_level(logging.WARNING, logger='zoo.hub'):
        baseline = zoo.create_model('deeplabv3plus_resnet18', num_classes=5,
                                    checkpoint_path=folder / 'model.safetensors')
    assert 'dropped head-set tensors the model has no place for (16)' in caplog.text
    assert 'heads.adapters.layer1.0.weight' in caplog.text
    _same_outputs(model, baseline)
    deployed = zoo.from_pretrained(folder).deploy()
    deployed.save_pretrained(tmp_path / 'deployed')
    reloaded = zoo.from_pretrained(tmp_path / 'deployed', strict=True)
    assert reloaded.heads is None and reloaded.deployed
    _same_outputs(model, reloaded)


def test_another_architecture_is_an_error(trained_folder):
    _, folder = trained_folder
    with pytest.raises(RuntimeError, match=r'does not fit deeplabv3plus_resnet18 \(lenient load\): missing'):
        zoo.create_model('deeplabv3plus_resnet18', num_classes=5, backbone='convnext_atto',
                         checkpoint_path=folder / 'model.safetensors')


def test_broken_folders_name_the_file(tmp_path, trained_folder):
    _, folder = trained_folder
    broken = tmp_path / 'broken'
    shutil.copytree(folder, broken)
    (broken / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match='broken/config.json is not valid JSON'):
        zoo.from_pretrained(broken)
    shutil.copy(folder / 'config.json', broken)
    data = (broken / 'model.safetensors').read_bytes()
    (broken / 'model.safetensors').write_bytes(data[:-100])
    with pytest.raises(RuntimeError, match='does not match the recorded sha256'):
        zoo.from_pretrained(broken)
    (broken / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='broken/model.safetensors does not exist'):
        zoo.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match='neither a weight folder nor a Hub repo id'):
        zoo.from_pretrained(tmp_path / 'nowhere' / 'x')


def test_publish_dry_run(trained_folder, monkeypatch, capsys):
    _, folder = trained_folder
    assert check_weight_folder(folder)['architecture'] == 'deeplabv3plus_resnet18_imachsr'
    monkeypatch.setenv('ZOO_HF_ORG', 'zoo-org')
    assert publish(folder, dry_run=True) == (
        f'zoo-org/{folder.name}', ['README.md', 'config.json', 'model.safetensors'])
    assert main(['publish', str(folder), '--repo-id', 'me/deeplab', '--dry-run']) == 0
    assert 'me/deeplab' in capsys.readouterr().out
    monkeypatch.delenv('ZOO_HF_ORG')
    with pytest.raises(ValueError, match='ZOO_HF_ORG is not set'):
        publish(folder, dry_run=True)
