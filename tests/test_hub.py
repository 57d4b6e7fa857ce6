"""Resolving published weights: local weights/ folders, the Hub cache offline, sha256 checks."""
import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo import _registry
from zoo._hub import resolve_weight_file, sha256_of
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
    with pytest.raises(RuntimeError, match=r'deeplabv3plus_resnet18_imachsr\.test: .* does not match the recorded '
                                           r'sha256 .*zoo-test/none'):
        resolve_weight_file(cfg)


def test_missing_weight_offline_says_where_to_put_it(published):
    _, cfg, folder = published
    (folder / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=r'model.safetensors of Hub repo zoo-test/none is neither cached nor '
                                                r'downloadable.*place it at'):
        zoo.create_model('deeplabv3plus_resnet18_imachsr.test', pretrained=True)
