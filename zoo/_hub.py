"""Finding and checking published weights: local ``weights/`` folders, then the Hugging Face Hub."""
import hashlib
import logging
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ._pretrained import PretrainedCfg

_logger = logging.getLogger(__name__)

REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'


def weights_dirs() -> list[Path]:
    """Local folders searched for ``<arch>.<tag>/``: ``$ZOO_WEIGHTS_DIR``, then the repo's ``weights/``."""
    dirs = [Path(os.environ['ZOO_WEIGHTS_DIR'])] if os.environ.get('ZOO_WEIGHTS_DIR') else []
    return dirs + [REPO_WEIGHTS_DIR]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def resolve_weight_file(cfg: PretrainedCfg) -> Path:
    """The checked file of a published weight: a local ``weights/`` folder, else the Hub.

    The sha256 recorded in ``cfg`` must match, whichever place the file came from.
    """
    for root in weights_dirs():
        candidate = root / cfg.name / cfg.file
        if candidate.is_file():
            _logger.debug('%s: using local file %s', cfg.name, candidate)
            return _checked(cfg, candidate)
    if not cfg.hf_hub_id:
        raise FileNotFoundError(f'{cfg.name}: no local copy in {[str(d) for d in weights_dirs()]} '
                                'and no Hugging Face Hub repo is recorded for it')
    try:
        path = Path(hf_hub_download(cfg.hf_hub_id, cfg.file))
    except (LocalEntryNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f'{cfg.name}: {cfg.file} of Hub repo {cfg.hf_hub_id} is neither cached nor downloadable '
            f'({type(error).__name__}). Offline, place it at '
            f'{weights_dirs()[0] / cfg.name / cfg.file} or in the Hugging Face cache '
            f'(huggingface-cli download {cfg.hf_hub_id} {cfg.file}).') from error
    _logger.debug('%s: using Hub file %s', cfg.name, path)
    return _checked(cfg, path)


def _checked(cfg: PretrainedCfg, path: Path) -> Path:
    if cfg.sha256 and sha256_of(path) != cfg.sha256:
        raise RuntimeError(f'{cfg.name}: {path} does not match the recorded sha256 {cfg.sha256} '
                           f'(Hub repo {cfg.hf_hub_id}): the file is truncated, corrupt or another '
                           'weight; delete it and download it again')
    return path
