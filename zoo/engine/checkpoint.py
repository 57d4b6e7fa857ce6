"""Training checkpoints: written atomically, pruned to the last K, read back without unpickling code.

A checkpoint holds everything a resumed run needs to continue exactly as if it had never
stopped: ``model``, ``optimizer``, ``scheduler``, ``scaler``, every process's ``rng`` states,
the ``step`` and the data position (``epoch``, ``batch``), the run's ``config`` and the
``model_config`` that rebuilds the model alone (``zoo eval --checkpoint``).
"""
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ..hub import atomic_write, load_weights, model_from_config

_logger = logging.getLogger(__name__)

FORMAT = 'zoo-train-checkpoint'
_STEP_FILE = re.compile(r'^checkpoint-(\d+)\.pt$')


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states, in types that
    ``torch.load(weights_only=True)`` reads back."""
    numpy_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state['python'][0], tuple(state['python'][1]), state['python'][2]))
    kind, key, *rest = state['numpy']
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def check_finite(model: nn.Module) -> None:
    """Refuse to save a model holding NaN or inf: a checkpoint must always be worth resuming."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f'model tensor {name} holds NaN or inf values; no checkpoint was written')


def write_checkpoint(path: Union[str, Path], state: dict[str, Any]) -> Path:
    """``torch.save`` into a temporary file renamed over ``path``: never a half-written file."""
    return atomic_write(path, lambda tmp: torch.save({'format': FORMAT, **state}, tmp))


def read_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = 'cpu') -> dict[str, Any]:
    """A checkpoint written by ``zoo train``; plain tensors and containers only (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0]
        raise RuntimeError(f'checkpoint {path} could not be read ({reason}); is it truncated or corrupt?') from error
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise ValueError(f'{path} is not a training checkpoint of zoo train (a weight folder or '
                         '.safetensors file loads with --model/create_model(checkpoint_path=...))')
    return state


def model_from_checkpoint(path: Union[str, Path], state: Optional[dict[str, Any]] = None) -> nn.Module:
    """Rebuild the model of a training checkpoint from its stored ``model_config`` and load it."""
    state = read_checkpoint(path) if state is None else state
    model = model_from_config(state['model_config'])
    load_weights(model, state['model'], strict=True, source=str(path))
    return model


class CheckpointManager:
    """``checkpoint-<step>.pt`` files in a run folder, the last ``keep_last`` kept, and ``best.pt``."""

    def __init__(self, run_dir: Union[str, Path], keep_last: int):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last

    def step_checkpoints(self) -> list[Path]:
        """This run's step checkpoints, oldest first."""
        found = [(int(m.group(1)), p) for p in self.run_dir.glob('checkpoint-*.pt')
                 if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[Path]:
        checkpoints = self.step_checkpoints()
        return checkpoints[-1] if checkpoints else None

    def save(self, step: int, state: dict[str, Any], best: bool = False) -> Path:
        """Write step ``step``'s checkpoint (and copy it to ``best.pt``), then drop the oldest."""
        path = write_checkpoint(self.run_dir / f'checkpoint-{step:07d}.pt', state)
        if best:
            atomic_write(self.run_dir / 'best.pt', lambda tmp: shutil.copyfile(path, tmp))
        for old in self.step_checkpoints()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        _logger.info('step %d: wrote %s%s', step, path, ' (best so far)' if best else '')
        return path


def load_model(name: Optional[str] = None, checkpoint: Union[str, Path, None] = None) -> nn.Module:
    """A trained model: a published weight ``name`` (``arch.tag``, ``hf-hub:org/repo``,
    ``local-dir:/path``), or ``checkpoint``: a training checkpoint of ``zoo train`` or a
    weight folder (``zoo.hub.from_pretrained``)."""
    from .._factory import create_model
    from ..hub import from_pretrained

    if (name is None) == (checkpoint is None):
        raise ValueError('give a model name or a checkpoint, not both or neither')
    if name is not None:
        return create_model(name, pretrained=True)
    path = Path(checkpoint)
    if path.suffix == '.safetensors':
        raise ValueError(f'{path} holds weights but no architecture: give its weight folder (with config.json), '
                         'or load it with create_model(name, checkpoint_path=...)')
    return from_pretrained(path) if path.is_dir() else model_from_checkpoint(path)
