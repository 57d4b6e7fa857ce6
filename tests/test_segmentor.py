"""The Segmentor contract on DeepLabv3+: any input size, train outputs, deploy(), bad input."""
import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.segmentor import SegmentorOutput


@pytest.fixture(scope='module')
def imachsr():
    torch.manual_seed(0)
    return zoo.create_model('deeplabv3plus_imachsr', num_classes=11)


def test_train_step_gives_finite_terms_and_adapter_gradients(imachsr):
    model = imachsr.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image, target = torch.randn(2, 3, 96, 128), torch.randint(0, 11, (2, 96, 128))
    target[:, :8] = 255
    out = model(image)
    assert isinstance(out, SegmentorOutput) and out.logits.shape == (2, 11, 96, 128)
    assert {name: t.shape[-2:] for name, t in out.aux.items()} == {
        'layer1': (24, 32), 'layer2': (12, 16), 'layer3': (6, 8)}
    terms = model.criterion()(out, target)
    assert set(terms) == {'loss_ce', 'loss', *(f'{p}.loss_{t}' for p in out.aux for t in ('mi', 'ne'))}
    assert all(torch.isfinite(t) for t in terms.values())
    optimizer.zero_grad()
    terms['loss'].backward()
    for name, adapter in model.heads.adapters.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters()), name
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0
    optimizer.step()


@pytest.mark.parametrize('size', [(361, 479), (64, 64), (33, 47)])
def test_any_input_size(imachsr, size):
    imachsr.eval()
    with torch.no_grad():
        assert imachsr(torch.randn(1, 3, *size)).shape == (1, 11, *size)
    imachsr.train()
    assert imachsr(torch.randn(2, 3, *size)).logits.shape == (2, 11, *size)


def test_batch_of_one_trains():
    model = zoo.create_model('deeplabv3plus_resnet18_imachsr', num_classes=11).train()
    out = model(torch.randn(1, 3, 64, 96))
    model.criterion()(out, torch.randint(0, 11, (1, 64, 96)))['loss'].backward()


def test_deploy_gives_the_baseline_architecture():
    torch.manual_seed(0)
    model = zoo.create_model('deeplabv3plus_resnet18_imachsr', num_classes=11)
    baseline = zoo.create_model('deeplabv3plus_resnet18', num_classes=11)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) > count(baseline)
    model.deploy()
    assert model.heads is None and model.supervision is None
    assert count(model) == count(baseline)
    assert list(model.state_dict()) == list(baseline.state_dict())
    baseline.load_state_dict(model.state_dict(), strict=True)
    model.eval(), baseline.eval()
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(image), baseline(image))
    assert isinstance(model.train()(image), torch.Tensor)  # no heads: plain logits in training too


def test_ds_model_uses_cross_entropy_at_points():
    model = zoo.create_model('deeplabv3plus_resnet18_ds', num_classes=5, points='input:2').train()
    out = model(torch.randn(2, 3, 64, 64))
    terms = model.criterion()(out, torch.randint(0, 5, (2, 64, 64)))
    assert set(terms) == {'loss_ce', 'act1.loss_ce', 'layer1.loss_ce', 'loss'}


@pytest.mark.parametrize('make_input, error, message', [
    (lambda: torch.randn(3, 64, 64), ValueError, '4-D'),
    (lambda: torch.randn(1, 4, 64, 64), ValueError, 'has 4 channels, the model expects 3'),
    (lambda: torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, 'float tensor'),
    (lambda: torch.full((1, 3, 64, 64), float('nan')), ValueError, 'NaN or inf'),
    (lambda: torch.full((1, 3, 64, 64), float('inf')), ValueError, 'NaN or inf'),
    (lambda: [[0.0]], TypeError, 'torch.Tensor'),
])
def test_bad_input_is_named(imachsr, make_input, error, message):
    imachsr.eval()
    with pytest.raises(error, match=message):
        imachsr(make_input())


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=1), 'num_classes must be an integer of at least 2'),
    (dict(num_classes=2.5), 'num_classes must be an integer'),
    (dict(points='layer9'), r"unknown point 'layer9'; valid points: \['act1', 'layer1'"),
    (dict(points='input:9'), 'asks for 9 points'),
    (dict(backbone='no_such_net'), "unknown timm model 'no_such_net'"),
    (dict(alpha={'layer7': 1.0}), 'not supervised'),
])
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.create_model('deeplabv3plus_imachsr', **kwargs)


def test_baseline_refuses_head_set_arguments():
    with pytest.raises(ValueError, match='use the _imachsr or _ds variant'):
        zoo.create_model('deeplabv3plus_resnet18', points='input:2')


def test_checkpoint_path_round_trip(tmp_path, imachsr):
    state = {k: v.contiguous() for k, v in imachsr.state_dict().items()}
    save_file(state, tmp_path / 'model.safetensors')
    torch.save({'model': {f'module.{k}': v for k, v in state.items()}}, tmp_path / 'ckpt.pth')
    for name in ('model.safetensors', 'ckpt.pth'):
        loaded = zoo.create_model('deeplabv3plus_imachsr', num_classes=11, checkpoint_path=tmp_path / name)
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key])
    (tmp_path / 'broken.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(RuntimeError, match='broken.safetensors could not be read'):
        zoo.create_model('deeplabv3plus_imachsr', num_classes=11, checkpoint_path=tmp_path / 'broken.safetensors')
    with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
        zoo.create_model('deeplabv3plus_imachsr', num_classes=11, checkpoint_path=tmp_path / 'missing.pth')
    with pytest.raises(RuntimeError, match=r"does not fit deeplabv3plus_resnet18 \(strict load\): unexpected"):
        zoo.create_model('deeplabv3plus_resnet18', num_classes=11, checkpoint_path=tmp_path / 'model.safetensors',
                         strict=True)


def test_aux_in_eval_mode_reads_the_adapters_as_early_exits(imachsr):
    imachsr.eval()
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        out = imachsr(image, aux=True)
        torch.testing.assert_close(out.logits, imachsr(image))  # BN and dropout stay in eval mode
    assert isinstance(out, SegmentorOutput) and list(out.aux) == imachsr.supervision.points
    assert not imachsr.training
    baseline = zoo.create_model('deeplabv3plus_resnet18', num_classes=11)
    with pytest.raises(ValueError, match='aux=True asks for the head set'):
        baseline(image, aux=True)
