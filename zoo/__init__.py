"""A timm-style zoo of semantic-segmentation models with iMacHSR deep supervision built in."""
import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _ClonePackageFinder(importlib.abc.MetaPathFinder):
    """Finds ``zoo.models`` / ``zoo.data`` in a plain clone, where they sit beside ``zoo/``.

    An installed wheel has them inside ``zoo/`` (pyproject's package-dir mapping); a clone used
    through torch.hub or ``PYTHONPATH`` keeps the repository layout, so they are mounted here.
    """

    def __init__(self, packages: dict[str, Path]):
        self.packages = packages

    def find_spec(self, fullname, path=None, target=None):
        init = self.packages.get(fullname)
        if init is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)])


def _mount_clone_packages() -> None:
    here = Path(__file__).resolve().parent
    clone = {f'{__name__}.{sub}': here.parent / sub / '__init__.py'
             for sub in ('models', 'data') if not (here / sub).is_dir()}
    missing = [str(init) for init in clone.values() if not init.is_file()]
    if missing:
        raise ImportError(f'zoo is incomplete: neither {here}/models|data nor {missing} exist')
    if clone and not any(isinstance(f, _ClonePackageFinder) for f in sys.meta_path):
        # First in line, so that an editable install's finder cannot serve another checkout.
        sys.meta_path.insert(0, _ClonePackageFinder(clone))


_mount_clone_packages()

from ._registry import (  # noqa: E402
    get_pretrained_cfg, is_model, list_models, list_pretrained, model_entrypoint, register_model,
    register_model_alias, split_model_name_tag)
from ._pretrained import PretrainedCfg  # noqa: E402
from ._factory import create_model  # noqa: E402
from .hub import from_pretrained, load_checkpoint, save_pretrained  # noqa: E402
from .backbone import SupervisableBackbone, TransitionPoint, select_points  # noqa: E402
from .segmentor import Segmentor, SegmentorOutput  # noqa: E402
from . import models  # noqa: E402,F401  (registers the architectures)

__version__ = '0.1.0'

__all__ = [
    'PretrainedCfg', 'Segmentor', 'SegmentorOutput', 'SupervisableBackbone', 'TransitionPoint',
    'create_model', 'from_pretrained', 'get_pretrained_cfg', 'is_model', 'list_models', 'list_pretrained',
    'load_checkpoint', 'model_entrypoint', 'register_model', 'register_model_alias',
    'save_pretrained', 'select_points', 'split_model_name_tag',
]
