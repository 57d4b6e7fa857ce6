"""Registry and factory in timm's style."""
import pytest

import zoo
from zoo._pretrained import PretrainedCfg


def test_list_and_filter():
    names = zoo.list_models()
    assert {'deeplabv3plus_resnet18', 'deeplabv3plus_resnet18_ds', 'deeplabv3plus_resnet18_imachsr'} <= set(names)
    assert names == sorted(names)
    assert zoo.list_models('deeplab*_ds') == ['deeplabv3plus_resnet18_ds']
    assert 'deeplabv3plus_resnet18_ds' not in zoo.list_models('deeplab*', exclude_filters=['*_ds'])
    assert 'deeplabv3plus_imachsr' in zoo.list_models('deeplab*', include_aliases=True)
    assert zoo.list_models('nothing*') == []


def test_is_model_and_aliases():
    assert zoo.is_model('deeplabv3plus_imachsr') and zoo.is_model('deeplabv3plus_resnet18.camvid')
    assert not zoo.is_model('deeplabv3_resnet18')
    assert zoo.model_entrypoint('deeplabv3plus_imachsr') is zoo.model_entrypoint('deeplabv3plus_resnet18_imachsr')


def test_unknown_names_suggest_close_ones():
    with pytest.raises(RuntimeError, match=r"Unknown model 'deeplabv3plus_resnt18'.*deeplabv3plus_resnet18"):
        zoo.create_model('deeplabv3plus_resnt18')
    with pytest.raises(RuntimeError, match='No pretrained weights are registered'):
        zoo.create_model('deeplabv3plus_resnet18', pretrained=True)


def test_pretrained_cfg_is_plain_data():
    cfg = PretrainedCfg(architecture='a_imachsr', tag='camvid', hf_hub_id='org/a', num_classes=11)
    assert cfg.name == 'a_imachsr.camvid'
    assert cfg.to_dict()['hf_hub_id'] == 'org/a' and cfg.to_dict()['mean'] == (0.485, 0.456, 0.406)


def test_create_model_records_its_arguments():
    model = zoo.create_model('deeplabv3plus_imachsr', num_classes=11, points='layer1,layer3')
    assert model.architecture == 'deeplabv3plus_resnet18_imachsr'
    assert model.model_args == {'num_classes': 11, 'points': ['layer1', 'layer3']}
    assert model.supervision.points == ['layer1', 'layer3']
