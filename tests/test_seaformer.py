"""SeaFormer: official sizes, the Segmentor contract, transition points, pretrained keys, ONNX."""
import re

import pytest
import torch
from torch import nn

import zoo
from zoo.backbone import POINT_KINDS, capture_points
from zoo.layers import SafeBatchNorm2d
from zoo._builder import load_backbone_checkpoint
from zoo.models.seaformer import official_to_zoo_key

SIZES = ('tiny', 'small', 'base', 'large')
OFFICIAL_PARAMS_M = {'tiny': 1.67, 'small': 3.99, 'base': 8.61, 'large': 13.95}
MODELS = [f'seaformer_{size}{variant}' for size in SIZES for variant in ('', '_ds', '_imachsr')]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return zoo.create_model('seaformer_tiny_imachsr', num_classes=11)


def test_all_variants_are_registered():
    assert zoo.list_models('seaformer*') == sorted(MODELS)
    model = zoo.create_model('seaformer_imachsr', num_classes=11)
    assert model.architecture == 'seaformer_base_imachsr'
    assert model.backbone.point('stage5')['num_chs'] == 256


@pytest.mark.parametrize('size', SIZES)
def test_parameter_count_matches_the_official_config(size):
    millions = count(zoo.create_model(f'seaformer_{size}')) / 1e6
    assert millions == pytest.approx(OFFICIAL_PARAMS_M[size], rel=0.02)


@pytest.mark.parametrize('name', MODELS)
def test_train_step(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=11).train()
    size = (192, 256) if name.startswith('seaformer_large') else (360, 480)  # large: CPU time
    image, target = torch.randn(2, 3, *size), torch.randint(0, 11, (2, *size))
    target[:, :10] = 255
    out = model(image)
    logits = out if model.heads is None else out.logits
    assert logits.shape == (2, 11, *size)
    terms = model.criterion()(out, target)
    assert all(torch.isfinite(t) for t in terms.values()), terms
    terms['loss'].backward()
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    attn = model.backbone.trans[-1][-1].attn
    # The context path ends in a zero-initialised BN: at the first step only its weight learns.
    assert attn.proj[1][1].weight.grad.abs().sum() > 0 and attn.to_q[0].weight.grad.abs().sum() > 0
    if model.heads is not None:
        assert set(model.heads.points) == {'stage1', 'stage2', 'stage3'}
        for key, adapter in model.heads.adapters.items():
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters()), key


@pytest.mark.parametrize('size', SIZES)
def test_deploy_gives_the_baseline(size):
    model = zoo.create_model(f'seaformer_{size}_imachsr', num_classes=11).deploy()
    baseline = zoo.create_model(f'seaformer_{size}', num_classes=11)
    assert count(model) == count(baseline)
    assert list(model.state_dict()) == list(baseline.state_dict())
    baseline.load_state_dict(model.state_dict(), strict=True)


def test_any_input_size_and_batch_of_one(tiny):
    tiny.eval()
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 361, 479)).shape == (1, 11, 361, 479)
        assert tiny(torch.randn(1, 3, 33, 47)).shape == (1, 11, 33, 47)
    tiny.train()
    # 64 px high: one row of 1/64 tokens, so the row squeeze holds a single value per channel;
    # 64 x 64: the whole 1/64 map is one pixel.
    for size in ((360, 480), (64, 320), (64, 64)):
        out = tiny(torch.randn(1, 3, *size))
        assert out.logits.shape == (1, 11, *size)
        tiny.criterion()(out, torch.randint(0, 11, (1, *size)))['loss'].backward()


def test_safe_batchnorm_uses_running_stats_for_a_single_value():
    torch.manual_seed(0)
    bn = SafeBatchNorm2d(4).train()
    bn.running_mean.uniform_(), bn.running_var.uniform_(0.5, 2)
    before = bn.state_dict()
    x = torch.randn(1, 4, 1, 1)
    expected = (x - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
    torch.testing.assert_close(bn(x), expected)
    for key, value in before.items():
        torch.testing.assert_close(bn.state_dict()[key], value)
    reference = nn.BatchNorm2d(4).train()
    reference.load_state_dict(before)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bn(x), reference(x))
    torch.testing.assert_close(bn.running_mean, reference.running_mean)


def test_feature_info(tiny):
    backbone = tiny.backbone
    info = backbone.feature_info
    names = [p['name'] for p in info]
    assert len(set(names)) == len(names) and not any('/' in n for n in names)
    assert all(p['kind'] in POINT_KINDS for p in info)
    assert names == ['stem', 'down1', 'stage1', 'down2', 'stage2', 'down3', 'stage3', 'stage4',
                     'attn.0', 'attn.1', 'stage5', 'attn.2', 'attn.3', 'fuse.0', 'fuse.1']
    assert backbone.out_points == ('fuse.1',) and backbone.pad_multiple == 64
    fired = []
    hooks = [backbone.get_submodule(p['module']).register_forward_hook(
        lambda *_, name=p['name']: fired.append(name)) for p in info]
    image = torch.randn(1, 3, 128, 192)
    backbone.eval()
    try:
        with torch.no_grad(), capture_points(backbone, info) as taps:
            features = backbone.forward_features(image)
    finally:
        for hook in hooks:
            hook.remove()
    assert fired == names  # forward order, each module once
    for p in info:
        assert taps[p['name']].shape[1:] == (p['num_chs'], 128 // p['reduction'], 192 // p['reduction']), p
    assert features[0] is taps['fuse.1']


def test_large_has_three_context_stages():
    backbone = zoo.create_model('seaformer_large').backbone
    kinds = {p['name']: (p['kind'], p['reduction']) for p in backbone.feature_info}
    assert [n for n in kinds if n.startswith(('attn', 'fuse'))] == [
        *(f'attn.{i}' for i in range(9)), 'fuse.0', 'fuse.1', 'fuse.2']
    assert kinds['attn.0'] == ('attention', 16) and kinds['attn.8'] == ('attention', 64)


@pytest.mark.parametrize('spec, expected', [
    ('auto', ['stage1', 'stage2', 'stage3']),
    ('stages', ['stage1', 'stage2', 'stage3', 'stage4', 'stage5']),
    ('input:2', ['stem', 'down1']),
    ('output:2', ['fuse.0', 'fuse.1']),
    ('uniform:3', ['down2', 'stage4', 'attn.2']),
    ('central:3', ['stage3', 'stage4', 'attn.0']),
    ('every:7', ['stem', 'stage4', 'fuse.1']),
    ('fuse.1, attn.2', ['attn.2', 'fuse.1']),
])
def test_point_selection(tiny, spec, expected):
    assert [p['name'] for p in tiny.backbone.select_points(spec)] == expected


def test_points_at_attention_and_fusion_train():
    model = zoo.create_model('seaformer_tiny_imachsr', num_classes=5, points='attn.3,fuse.0').train()
    out = model(torch.randn(2, 3, 128, 128))
    assert {k: v.shape[-2:] for k, v in out.aux.items()} == {'attn.3': (2, 2), 'fuse.0': (16, 16)}
    model.criterion()(out, torch.randint(0, 5, (2, 128, 128)))['loss'].backward()
    with pytest.raises(ValueError, match=r"unknown point 'attn.9'; valid points: \['stem'"):
        zoo.create_model('seaformer_tiny_imachsr', points='attn.9')


def zoo_to_official_key(key: str) -> str:
    """The official layout (seaformer-cls ``SeaFormer``), written out independently of the model."""
    key = re.sub(r'^stem\.(\d)\.', lambda m: f'smb1.stem_block.0.{"c" if m[1] == "0" else "bn"}.', key)
    key = re.sub(r'^stages\.(\d+)\.(\d+)\.conv\.(\d+)\.(\d)\.',
                 lambda m: f'smb{int(m[1]) + 1}.layer{int(m[2]) + 1}.conv.{2 * int(m[3])}.'
                           f'{"c" if m[4] == "0" else "bn"}.', key)
    key = re.sub(r'^trans\.(\d+)\.(\d+)\.', lambda m: f'trans{int(m[1]) + 1}.transformer_blocks.{m[2]}.', key)
    return re.sub(r'\.(to_[qkv]|attn\.dwconv|pwconv|fc[12]|proj(?:_encode_row|_encode_column)?\.1)\.([01])\.',
                  lambda m: f'.{m[1]}.{"c" if m[2] == "0" else "bn"}.', key)


def test_pretrained_backbone_in_the_official_layout(tmp_path):
    torch.manual_seed(1)
    source = zoo.create_model('seaformer_tiny').backbone
    state = {zoo_to_official_key(k): v for k, v in source.state_dict().items() if not k.startswith('fuse.')}
    assert official_to_zoo_key('smb2.layer1.conv.4.bn.running_var') == 'stages.1.0.conv.2.1.running_var'
    assert official_to_zoo_key('trans1.transformer_blocks.1.attn.proj.1.c.weight') == 'trans.0.1.attn.proj.1.0.weight'
    del state['trans2.transformer_blocks.1.mlp.fc2.bn.bias']
    state['linear.weight'], state['linear.bias'] = torch.randn(1000, 160), torch.randn(1000)
    path = tmp_path / 'SeaFormer_T.pth'
    torch.save({'state_dict_ema': state}, path)
    torch.manual_seed(2)
    loaded = zoo.create_model('seaformer_tiny_imachsr', pretrained_backbone=path).backbone.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith('fuse.') and key != 'trans.1.1.mlp.fc2.1.bias':
            torch.testing.assert_close(loaded[key], value, msg=key)
    backbone = zoo.create_model('seaformer_tiny').backbone
    report = load_backbone_checkpoint(backbone, path, official_to_zoo_key, segmentation_only=('fuse.',))
    assert sorted(report.unexpected_keys) == ['linear.bias', 'linear.weight']
    assert {k for k in report.missing_keys if not k.startswith('fuse.')} == {'trans.1.1.mlp.fc2.1.bias'}
    with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
        zoo.create_model('seaformer_tiny', pretrained_backbone=tmp_path / 'missing.pth')


def test_onnx_export_of_the_deployed_model(tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    model = zoo.create_model('seaformer_tiny_imachsr', num_classes=11).deploy().eval()
    image = torch.randn(1, 3, 256, 320)
    path = tmp_path / 'seaformer_tiny.onnx'
    try:
        torch.onnx.export(model, (image,), path, opset_version=17)
    except Exception:  # the dynamo exporter needs onnxscript; the TorchScript one does not
        torch.onnx.export(model, (image,), path, opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    result = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    with torch.no_grad():
        expected = model(image)
    torch.testing.assert_close(torch.from_numpy(result), expected, atol=1e-4, rtol=1e-4)
