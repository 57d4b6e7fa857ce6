"""Any timm model as a SupervisableBackbone under DeepLabv3+."""
import pytest
import torch

import zoo


@pytest.mark.parametrize('backbone', ['resnet18', 'mobilenetv3_large_100', 'convnext_atto', 'efficientnet_b0',
                                      'vit_tiny_patch16_224', 'tu-deit_tiny_patch16_224'])
def test_imachsr_trains_one_step_on_any_timm_backbone(backbone):
    torch.manual_seed(0)
    model = zoo.create_model('deeplabv3plus_imachsr', num_classes=6, backbone=backbone).train()
    points = model.backbone.feature_info
    assert len({p['name'] for p in points}) == len(points) > 2
    assert all(p['kind'] in ('stage', 'attention') for p in points)
    image, target = torch.randn(2, 3, 65, 97), torch.randint(0, 6, (2, 65, 97))
    out = model(image)
    assert out.logits.shape == (2, 6, 65, 97) and len(out.aux) == 3
    for name, logits in out.aux.items():
        reduction = model.backbone.point(name)['reduction']
        assert logits.shape[-2:] == (out.padded_size[0] // reduction, out.padded_size[1] // reduction)
    terms = model.criterion()(out, target)
    assert all(torch.isfinite(t) for t in terms.values())
    terms['loss'].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    model.eval()
    with torch.no_grad():
        assert model(image[:1]).shape == (1, 6, 65, 97)
    model.deploy()
    baseline = zoo.create_model('deeplabv3plus_resnet18', num_classes=6, backbone=backbone)
    baseline.load_state_dict(model.state_dict(), strict=True)


def test_output_stride_is_16_where_the_backbone_can_dilate():
    resnet = zoo.create_model('deeplabv3plus_resnet18', backbone='resnet18')
    assert resnet.backbone.feature_info[-1]['reduction'] == 16
    mobile = zoo.create_model('deeplabv3plus_resnet18', backbone='mobilenetv3_large_100')
    assert mobile.backbone.feature_info[-1]['reduction'] == 32
    assert mobile.decoder.aspp[0].branches[1][0].dilation == (6, 6)  # rates scale with the stride
    with pytest.raises(ValueError, match='cannot reach output stride 16'):
        zoo.create_model('deeplabv3plus_resnet18', backbone='mobilenetv3_large_100', output_stride=16)


def test_shape_trace_path_gives_block_level_points():
    model = zoo.create_model('deeplabv3plus_resnet18_imachsr', num_classes=4, use_intermediates=False,
                             points='stages').train()
    names = [p['name'] for p in model.backbone.feature_info]
    assert names == ['conv1', 'act1', 'maxpool', 'layer1.1', 'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1',
                     'layer4.1']
    assert model.backbone.out_points == ('layer1.1', 'layer4.1')
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out.aux) == ['act1', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    reference = zoo.create_model('deeplabv3plus_resnet18', num_classes=4)
    reference.load_state_dict(model.deploy().state_dict())
    model.eval(), reference.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # hooks and forward_intermediates read the same tensors
        torch.testing.assert_close(model(image), reference(image))
