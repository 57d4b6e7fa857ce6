"""Packaging: zoo.models / zoo.data install inside zoo, and a plain clone imports the same way."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import zoo

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_puts_models_and_data_inside_zoo(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder in the tree it builds.
    source = tmp_path / 'source'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns('.venv', '.git', '__pycache__', 'build', 'runs'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                    '-w', str(tmp_path), str(source)], check=True, capture_output=True)
    wheel, = tmp_path.glob('*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split('/')[0] for name in names if not name.split('/')[0].endswith('.dist-info')}
    assert top_level == {'zoo'}
    assert {'zoo/models/__init__.py', 'zoo/models/deeplabv3plus.py', 'zoo/data/__init__.py'} <= set(names)
    assert any(name.startswith('zoo/data/sample/camvid/val/') for name in names)


@pytest.fixture(scope='module')
def clone(tmp_path_factory) -> Path:
    """A copy of the repository's code, as torch.hub would see a clone."""
    target = tmp_path_factory.mktemp('clone')
    for name in ('zoo', 'models', 'data'):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT / 'hubconf.py', target)
    return target


def test_plain_clone_imports_its_own_subpackages(clone):
    code = ('import zoo, zoo.models, zoo.data, zoo.models.deeplabv3plus as d;'
            'print(zoo.__file__, zoo.models.__file__, zoo.data.__file__, d.__file__, sep="\\n")')
    result = subprocess.run([sys.executable, '-c', code], cwd=clone, capture_output=True, text=True, check=True)
    files = result.stdout.split()
    assert files == [str(clone / 'zoo/__init__.py'), str(clone / 'models/__init__.py'),
                     str(clone / 'data/__init__.py'), str(clone / 'models/deeplabv3plus.py')]


def test_torch_hub_loads_from_a_clone(clone):
    code = ("import torch, hubconf; m = torch.hub.load('.', 'deeplabv3plus_imachsr', source='local', num_classes=5);"
            "print(type(m).__name__, m.architecture, len([n for n in dir(hubconf) if n[0] != '_' and n != 'dependencies']))")
    result = subprocess.run([sys.executable, '-c', code], cwd=clone, capture_output=True, text=True, check=True)
    name, architecture, count = result.stdout.split()
    assert (name, architecture) == ('Segmentor', 'deeplabv3plus_resnet18_imachsr')
    assert int(count) == len(zoo.list_models(include_aliases=True))


def test_hubconf_entrypoints_in_process():
    model = torch.hub.load(str(ROOT), 'deeplabv3plus_resnet18', source='local', num_classes=3)
    assert model.num_classes == 3 and model.heads is None
    sys.path.insert(0, str(ROOT))
    try:
        import hubconf
    finally:
        sys.path.remove(str(ROOT))
    assert hubconf.deeplabv3plus_imachsr.__doc__.startswith('DeepLabv3+ ResNet-18 with the iMacHSR head set')


def test_cli_list_and_errors():
    from zoo.cli import main
    assert main(['list', 'deeplab*']) == 0
    result = subprocess.run([sys.executable, '-m', 'zoo', 'list', 'deeplab*_ds'], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ['deeplabv3plus_resnet18_ds']
    result = subprocess.run([sys.executable, '-m', 'zoo', 'demo', '--model', 'nonet'], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "Unknown model 'nonet'" in result.stderr
