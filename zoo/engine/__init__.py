"""Training and evaluation: ``zoo train``, ``zoo eval``, ``zoo predict`` and ``zoo plot`` in code."""
from .checkpoint import CheckpointManager, model_from_checkpoint, read_checkpoint, write_checkpoint
from .config import TrainConfig
from .evaluate import InferenceCfg, evaluate, predict_probs
from .train import NonFiniteLossError, TrainResult, param_groups, poly_warmup, train

__all__ = [
    'CheckpointManager', 'InferenceCfg', 'NonFiniteLossError', 'TrainConfig', 'TrainResult', 'evaluate',
    'model_from_checkpoint', 'param_groups', 'poly_warmup', 'predict_probs', 'read_checkpoint', 'train',
    'write_checkpoint',
]
