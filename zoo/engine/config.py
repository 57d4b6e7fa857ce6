"""``TrainConfig``: one dataclass for a training run; YAML recipes and ``zoo train`` options alike.

A recipe is a flat YAML mapping of these fields; options on the command line override it
(``zoo train --config configs/x.yaml --lr 1e-3``). Every value is checked against its field's
type and choices, and an error names the key, the value and, for files, the file.
"""
import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

Weight = Union[float, dict[str, float]]


def _opt(default: Any, help: str) -> Any:
    """A field with its ``--help`` text (a fresh copy of a mutable default for each config)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={'help': help})
    return field(default=default, metadata={'help': help})


@dataclass
class TrainConfig:
    """What a training run depends on (``zoo train --help`` lists the same fields)."""
    # model and its head set
    model: str = _opt('topformer_tiny_imachsr', 'registered model name (zoo list)')
    points: Union[str, list[Union[str, int]], None] = _opt(
        None, "supervised points of a _ds/_imachsr model: 'auto', 'uniform:K', ... or a list (default: auto)")
    alpha: Optional[Weight] = _opt(None, 'weight of each point loss: a number or {point: weight} (default 0.4)')
    beta: Optional[Weight] = _opt(None, 'weight of each negative-entropy term (iMacHSR; default 0.1)')
    ne_on: Optional[Literal['logits', 'features']] = _opt(None, 'negative entropy on adapter logits or features')
    model_kwargs: dict[str, Any] = _opt({}, "other create_model arguments, e.g. {backbone: convnext_atto}")
    # data
    data: str = _opt('camvid', 'dataset name (camvid, cityscapes, synthia, folder)')
    root: str = _opt('', 'dataset root folder')
    train_split: str = _opt('train', 'split to train on')
    val_split: Optional[str] = _opt('val', 'split to validate on (null: no validation)')
    data_kwargs: dict[str, Any] = _opt({}, 'other dataset arguments, e.g. {classes: [...]} for folder')
    crop_size: tuple[int, int] = _opt((360, 480), 'training crop, height width')
    scale_range: tuple[float, float] = _opt((0.5, 2.0), 'random rescale range before cropping')
    batch_size: int = _opt(8, 'images per step and process')
    workers: int = _opt(4, 'data loader processes per training process')
    # schedule and optimiser
    iters: Optional[int] = _opt(None, 'optimiser steps (or give epochs)')
    epochs: Optional[int] = _opt(None, 'passes over the training set (or give iters)')
    optimizer: Literal['adam', 'adamw', 'sgd'] = _opt('adam', 'optimiser')
    lr: float = _opt(1e-3, 'peak learning rate')
    weight_decay: float = _opt(0.0, 'weight decay (never on norms, biases, positional embeddings)')
    momentum: float = _opt(0.9, 'SGD momentum')
    betas: tuple[float, float] = _opt((0.9, 0.999), 'Adam/AdamW betas')
    warmup_iters: int = _opt(0, 'linear warm-up steps')
    warmup_ratio: float = _opt(1e-6, 'learning-rate factor at the first warm-up step')
    poly_power: float = _opt(0.9, 'poly decay: lr = (lr - min_lr) (1 - step / iters)^power + min_lr')
    min_lr: float = _opt(0.0, 'learning rate at the last step')
    grad_clip: Optional[float] = _opt(None, 'clip the gradients to this global L2 norm')
    class_weight: Union[Literal['median_freq'], list[float], None] = _opt(
        None, "cross-entropy class weights: 'median_freq' (from train label frequencies) or a list")
    # numerics and devices
    device: Literal['auto', 'cpu', 'cuda'] = _opt('auto', 'auto: CUDA if available')
    amp: Literal['auto', 'none', 'bf16', 'fp16'] = _opt(
        'auto', "mixed precision; 'auto': bf16 (else fp16) on CUDA, none on CPU")
    channels_last: bool = _opt(False, 'channels-last memory format')
    sync_bn: bool = _opt(False, 'SyncBatchNorm when distributed (CUDA only)')
    find_unused_parameters: bool = _opt(False, 'DDP: allow parameters without gradients')
    seed: int = _opt(0, 'seed of every random number generator')
    deterministic: bool = _opt(False, 'deterministic algorithms: repeatable runs, slower')
    skip_nonfinite: bool = _opt(False, 'skip a step whose loss is NaN/inf instead of stopping')
    # run directory, logging, checkpoints
    run_dir: str = _opt('', 'output folder (default: runs/<model>)')
    log_interval: int = _opt(10, 'steps between log records')
    val_interval: int = _opt(0, 'steps between validations (0: at the end only)')
    ckpt_interval: int = _opt(1000, 'steps between checkpoints (one is always written at the end)')
    keep_last: int = _opt(3, 'step checkpoints kept (best.pt is kept apart)')

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, _coerce(spec.name, getattr(self, spec.name), hints[spec.name]))
        if (self.iters is None) == (self.epochs is None):
            raise ValueError(f'give exactly one of iters and epochs (got iters={self.iters!r}, epochs={self.epochs!r})')
        for name in ('iters', 'epochs', 'batch_size', 'log_interval', 'ckpt_interval', 'keep_last'):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f'{name} must be at least 1, got {value!r}')
        for name in ('workers', 'warmup_iters', 'val_interval', 'weight_decay', 'min_lr'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must not be negative, got {getattr(self, name)!r}')
        if self.lr <= 0:
            raise ValueError(f'lr must be positive, got {self.lr!r}')
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f'grad_clip must be positive, got {self.grad_clip!r}')
        if not 0 < self.warmup_ratio <= 1:
            raise ValueError(f'warmup_ratio must lie in (0, 1], got {self.warmup_ratio!r}')
        if min(self.crop_size) < 1 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f'bad crop_size {self.crop_size!r} or scale_range {self.scale_range!r}')
        if not self.root:
            raise ValueError('root is not set: give the dataset folder (--root DIR or root: in the config)')
        if not self.run_dir:
            self.run_dir = str(Path('runs') / self.model)

    def head_set_kwargs(self) -> dict[str, Any]:
        """The create_model arguments of the head set that are set."""
        return {k: getattr(self, k) for k in ('points', 'alpha', 'beta', 'ne_on') if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = 'config') -> 'TrainConfig':
        if not isinstance(values, dict):
            raise ValueError(f'{source}: expected a mapping of config keys, got {type(values).__name__}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}')
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f'{source}: {error}') from None

    @classmethod
    def from_yaml(cls, path: Union[str, Path], **overrides: Any) -> 'TrainConfig':
        """Read a recipe; ``overrides`` (e.g. from the command line) replace its values."""
        path = Path(path)
        values = read_recipe(path)
        for length, other in (('iters', 'epochs'), ('epochs', 'iters')):
            if overrides.get(length) is not None and other not in overrides:
                values.pop(other, None)  # --iters replaces the recipe's epochs, and vice versa
        return cls.from_dict({**values, **overrides}, source=f'config file {path} (with command-line overrides)'
                             if overrides else f'config file {path}')

    def to_yaml(self, path: Union[str, Path]) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML recipe. A recipe may name another in ``_base_`` (a path relative to
    itself, as in mmsegmentation): the base's keys come first and the recipe's own replace them."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f'config file {path} does not exist'
                                + (f' (the _base_ of {_seen[-1]})' if _seen else '')) from None
    except yaml.YAMLError as error:
        raise ValueError(f'config file {path} is not valid YAML: {error}') from None
    if not isinstance(values, dict):
        raise ValueError(f'config file {path}: expected a mapping of config keys, got {type(values).__name__}')
    base = values.pop('_base_', None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ValueError(f'config file {path}: _base_ must be a file path, got {base!r}')
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ValueError(f'config file {path}: _base_ {base} makes a cycle')
    return {**read_recipe(base_path, (*_seen, path.resolve())), **values}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type ``annotation`` asks for, or a ValueError naming ``name``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ValueError:
                continue
        raise ValueError(f'{name}: {value!r} is not a valid value (expected {_describe(annotation)})')
    if origin is Literal:
        if value not in args:
            raise ValueError(f'{name}: {value!r} is not one of {", ".join(map(str, args))}')
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f'{name}: {value!r} is not a list of {len(args)} values')
        return tuple(_coerce(name, v, a) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'{name}: {value!r} is not a list')
        return [_coerce(name, v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f'{name}: {value!r} is not a mapping')
        return {_coerce(name, k, args[0]): _coerce(name, v, args[1]) for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            number = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise ValueError(f'{name}: {value!r} is not a number') from None
        if not math.isfinite(number):
            raise ValueError(f'{name}: {value!r} is not a finite number')
        return number
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ValueError(f'{name}: {value!r} is not a {annotation.__name__}')
    return value


def _describe(annotation: Any) -> str:
    return str(annotation).replace('typing.', '')


# ---------------------------------------------------------------------------------------------
# Command-line options generated from the fields


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per field; unset options are absent from the namespace, so
    that only what is given overrides the recipe."""
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group('training config (overrides --config)')
    for spec in dataclasses.fields(TrainConfig):
        annotation = hints[spec.name]
        flag = '--' + spec.name.replace('_', '-')
        kwargs: dict[str, Any] = dict(dest=spec.name, default=argparse.SUPPRESS, help=spec.metadata['help'])
        if annotation is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(nargs=len(typing.get_args(annotation)), type=typing.get_args(annotation)[0],
                          metavar=spec.name.split('_')[-1].upper())
        elif typing.get_origin(annotation) is Literal:
            kwargs['choices'] = typing.get_args(annotation)
        elif annotation is str:
            kwargs['type'] = str
        else:
            # numbers, lists, mappings and null are read as YAML: --alpha '{layer1: 1.0}'
            kwargs['type'] = yaml.safe_load
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe ``args.config`` (if any) with the options given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        return TrainConfig.from_yaml(args.config, **overrides)
    return TrainConfig.from_dict(overrides, source='command line')
