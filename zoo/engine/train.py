"""``train``: the loop behind ``zoo train``, in one process or under ``torchrun`` (DDP).

The run is counted in optimiser steps. Its randomness is fixed by the seed and the step alone,
so a run resumed from a checkpoint continues exactly: the data order comes from the seed and
the epoch, each sample's augmentation from (seed, epoch, index), whichever worker loads it,
and the global generators are restored from the checkpoint.
"""
import contextlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from .._factory import create_model
from ..hub import atomic_write, model_config
from .checkpoint import CheckpointManager, check_finite, read_checkpoint, rng_state, set_rng_state
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_mean, barrier, broadcast_buffers, cleanup, init_distributed
from .evaluate import OUTPUT, collate_list, evaluate

_logger = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'
# Settings a resumed run may change: they do not alter what is computed (a run folder may move).
_RESUMABLE_CHANGES = {'root', 'run_dir', 'workers', 'log_interval', 'val_interval', 'ckpt_interval', 'keep_last', 'device'}
_NO_DECAY_NAME = re.compile(r'pos|embed|token')


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the step was not taken and nothing was saved for it."""


@dataclass
class TrainResult:
    model: nn.Module              # the trained model (not DDP-wrapped), in train mode
    step: int
    run_dir: Path
    val: Optional[dict]           # the last validation's metrics, if any
    best: Optional[dict]          # {'step', 'mIoU'} of the best validation


# ---------------------------------------------------------------------------------------------
# Data


class SeededAugmentation(Dataset):
    """``dataset`` loaded through ``transform``, keyed by ``(epoch, index)``: the transform's
    generators are seeded from (seed, epoch, index), so a sample's augmentation does not depend
    on the loader worker, the order, or an interruption."""

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        image, label = self.dataset.load_pair(index)
        sequence = np.random.SeedSequence([self.seed, epoch, index])
        self.transform.set_random_state(np.random.default_rng(sequence),
                                        random.Random(int(sequence.generate_state(1)[0])))
        out = self.transform(image=image, mask=label)
        return out['image'], out['mask'].long()


class EpochSampler(DistributedSampler):
    """This process's shard of the epoch's permutation (seed + epoch), as ``(epoch, index)``
    keys, starting ``skip`` samples in when a run resumes mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, index) for index in list(super().__iter__())[self.skip:]])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def median_frequency_weights(dataset) -> Tensor:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights):

        freq_c = pixels of c / valid pixels of the images that contain c,   w_c = median(freq) / freq_c

    over the classes present; a class absent from every label gets weight 0 (it has no pixels)."""
    pixels = np.zeros(dataset.num_classes)
    exposure = np.zeros(dataset.num_classes)
    for index in range(len(dataset)):
        _, label = dataset.load_pair(index)
        counts = np.bincount(label.ravel(), minlength=256)[:dataset.num_classes]
        pixels += counts
        exposure += (counts > 0) * counts.sum()
    present = pixels > 0
    freq = np.where(present, pixels / np.maximum(exposure, 1), 0)
    weights = np.where(present, np.median(freq[present]) / np.maximum(freq, 1e-12), 0)
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: not on norms and biases (1-D) nor positional embeddings
    and tokens (parameters named like ``pos_embed``, ``cls_token``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit('.', 1)[-1]
        (no_decay if param.ndim <= 1 or _NO_DECAY_NAME.search(leaf) else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    optimizer = torch.optim.AdamW if cfg.optimizer == 'adamw' else torch.optim.Adam
    return optimizer(groups, lr=cfg.lr, betas=cfg.betas)


def poly_warmup(cfg: TrainConfig, total: int):
    """The factor of ``lr`` at step t (0-based) of ``total``:

        poly(t) = (1 - m) (1 - t / total)^power + m,   m = min_lr / lr
        factor(t) = poly(t) (r + (1 - r) t / warmup)  while t < warmup,  poly(t) after
    """
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        poly = (1 - floor) * (1 - min(step, total) / total) ** cfg.poly_power + floor
        if step < cfg.warmup_iters:
            poly *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_iters
        return poly
    return factor


# ---------------------------------------------------------------------------------------------
# The run


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    if cfg.amp == 'none' or (cfg.amp == 'auto' and device.type != 'cuda'):
        return None
    if cfg.amp == 'fp16' and device.type != 'cuda':
        raise ValueError(f'amp: fp16 autocast needs CUDA (device is {device}); use bf16 on CPU')
    if cfg.amp == 'auto':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.amp == 'bf16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise ValueError(f'amp: {torch.cuda.get_device_name(device)} does not support bf16; use fp16')
    return torch.bfloat16 if cfg.amp == 'bf16' else torch.float16


@contextlib.contextmanager
def _determinism(cfg: TrainConfig, device: torch.device):
    """Deterministic kernels for the run (on CUDA a warning where none exists, e.g. bilinear
    upsampling's backward), restored afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if cfg.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=device.type == 'cuda')
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _IntervalMeter:
    """Means of the loss terms over the steps since the last record, and the images per second."""

    def __init__(self, step: int, images_per_step: int):
        self.images_per_step = images_per_step
        self._reset(step)

    def _reset(self, step: int) -> None:
        self.sums: dict[str, float] = {}
        self.counted = self.skipped = 0
        self.since, self.clock = step, time.perf_counter()

    def add(self, values: Optional[dict[str, float]]) -> None:
        if values is None:
            self.skipped += 1
            return
        self.sums = {k: self.sums.get(k, 0.0) + v for k, v in values.items()}
        self.counted += 1

    def flush(self, step: int) -> dict[str, float]:
        record = {k: v / self.counted for k, v in self.sums.items()}
        record['images_per_s'] = (step - self.since) * self.images_per_step / (time.perf_counter() - self.clock)
        if self.skipped:
            record['skipped'] = self.skipped
        self._reset(step)
        return record


class Trainer:
    """One training run of ``cfg`` on this process; ``fit()`` runs it (see ``train``)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        from ..data import create_dataset

        self.cfg, self.env, self.device = cfg, env, env.device
        self.run_dir = Path(cfg.run_dir)
        self.amp_dtype = _amp_dtype(cfg, self.device)
        _seed_everything(cfg.seed)  # the same initial weights in every process
        train_set = create_dataset(cfg.data, cfg.root, cfg.train_split, **cfg.data_kwargs)
        self.classes, self.num_classes = list(train_set.classes), train_set.num_classes
        self.ignore_index = train_set.ignore_index
        self._build_model(train_set)
        self._build_loaders(train_set)
        self.class_weight = self._class_weight(train_set)
        self.criterion = self.model.criterion(class_weight=self.class_weight).to(self.device)
        self.net = self._wrap()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, poly_warmup(cfg, self.total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.keep_last)
        self.step = 0
        self.best: Optional[dict] = None
        self.val: Optional[dict] = None
        # from here on each process draws its own numbers (dropout, drop-path); a resumed run
        # restores them from the checkpoint
        _seed_everything(cfg.seed + env.rank)

    def _build_model(self, train_set) -> None:
        from ..data import IMAGENET_MEAN, IMAGENET_STD

        cfg = self.cfg
        self.model = create_model(cfg.model, num_classes=self.num_classes, **cfg.head_set_kwargs(), **cfg.model_kwargs)
        self.mean = tuple(self.model.pretrained_cfg.get('mean') or IMAGENET_MEAN)
        self.std = tuple(self.model.pretrained_cfg.get('std') or IMAGENET_STD)
        # what a weight folder or an eval of this model needs to know, besides the weights
        self.model.pretrained_cfg.update(
            label_names=self.classes, palette=[list(c) for c in train_set.palette], mean=list(self.mean),
            std=list(self.std), ignore_index=self.ignore_index, dataset=cfg.data, input_size=[3, *cfg.crop_size],
            recipe={k: v for k, v in cfg.to_dict().items() if k not in ('root', 'run_dir')})
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _build_loaders(self, train_set) -> None:
        from ..data import build_transforms, create_dataset

        cfg, env = self.cfg, self.env
        transform = build_transforms(train=True, crop_size=cfg.crop_size, mean=self.mean, std=self.std,
                                     scale_range=cfg.scale_range, ignore_index=self.ignore_index)
        self.sampler = EpochSampler(train_set, env.world_size, env.rank, cfg.seed)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f'{cfg.data} split {cfg.train_split!r} has {len(train_set)} images: too few for '
                             f'batch_size {cfg.batch_size} on {env.world_size} process(es)')
        self.total_steps = cfg.iters or cfg.epochs * self.steps_per_epoch
        self.loader = DataLoader(
            SeededAugmentation(train_set, transform, cfg.seed), batch_size=cfg.batch_size, sampler=self.sampler,
            num_workers=cfg.workers, drop_last=True, pin_memory=self.device.type == 'cuda',
            persistent_workers=cfg.workers > 0,
            # its own generator: creating an iterator must not draw from the global one, which a
            # resumed run restores from the checkpoint
            generator=torch.Generator().manual_seed(cfg.seed))
        self.val_loader = None
        if cfg.val_split:
            val_set = create_dataset(cfg.data, cfg.root, cfg.val_split, **cfg.data_kwargs,
                                     transform=build_transforms(train=False, mean=self.mean, std=self.std))
            # a strided shard, not DistributedSampler: its padding would count some images twice
            self.val_loader = DataLoader(val_set, batch_size=1, sampler=range(env.rank, len(val_set), env.world_size),
                                         num_workers=min(cfg.workers, 2), collate_fn=collate_list)

    def _class_weight(self, train_set) -> Optional[Tensor]:
        if self.cfg.class_weight == 'median_freq':
            return median_frequency_weights(train_set)
        if self.cfg.class_weight is None:
            return None
        if len(self.cfg.class_weight) != self.num_classes:
            raise ValueError(f'class_weight has {len(self.cfg.class_weight)} values for {self.num_classes} classes')
        return torch.tensor(self.cfg.class_weight, dtype=torch.float32)

    def _wrap(self) -> nn.Module:
        """The module that trains: the model itself, or DDP around it (with SyncBatchNorm)."""
        if not self.env.distributed:
            if self.cfg.sync_bn:
                _logger.warning('sync_bn has no effect in a single process')
            return self.model
        if self.cfg.sync_bn:
            if self.device.type != 'cuda':
                raise ValueError('sync_bn: SyncBatchNorm runs on CUDA only; leave it off on CPU')
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # swaps the BatchNorm modules in place
        device_ids = [self.device.index] if self.device.type == 'cuda' else None
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       find_unused_parameters=self.cfg.find_unused_parameters)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng = rng_state()
        if self.env.distributed:
            states: list = [None] * self.env.world_size
            dist.all_gather_object(states, rng)
            rng = states
        else:
            rng = [rng]
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return {
            'step': self.step, 'epoch': epoch, 'batch': batch, 'config': self.cfg.to_dict(),
            'model_config': model_config(self.model), 'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(), 'rng': rng, 'best': self.best, 'val': self.val,
            'class_weight': self.class_weight,
        }

    def save(self, best: bool = False) -> None:
        """Every process joins (RNG states are gathered); rank 0 writes."""
        state = self.state_dict()
        if self.env.is_main:
            check_finite(self.model)
            self.checkpoints.save(self.step, state, best)
        barrier()

    def resume(self, path: Path) -> None:
        state = read_checkpoint(path, map_location=self.device)
        stored = state['config']
        changed = {k: (stored.get(k), v) for k, v in self.cfg.to_dict().items()
                   if k not in _RESUMABLE_CHANGES and stored.get(k) != v}
        if changed:
            raise ValueError(f'cannot resume from {path}: the config differs from the checkpoint\'s in '
                             + ', '.join(f'{k} ({old!r} there, {new!r} now)' for k, (old, new) in changed.items())
                             + f'; resume with {self.run_dir / "config.yaml"}')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        self.step, self.best, self.val = state['step'], state['best'], state['val']
        if len(state['rng']) != self.env.world_size:
            _logger.warning('%s was written by %d process(es), this run has %d: the data order and random '
                            'draws will differ from an uninterrupted run', path, len(state['rng']), self.env.world_size)
        set_rng_state(state['rng'][min(self.env.rank, len(state['rng']) - 1)])
        if self.env.is_main:
            self._truncate_log(self.step)
            _logger.info('resumed from %s at step %d', path, self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop the records the interrupted run logged after its checkpoint: they are redone."""
        log = self.run_dir / METRICS_FILE
        if log.is_file():
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)['step'] <= step]
            atomic_write(log, lambda tmp: tmp.write_text(''.join(line + '\n' for line in kept)))

    def _log(self, record: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.run_dir / METRICS_FILE, 'a') as file:
                file.write(json.dumps(record) + '\n')

    # -- steps ---------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        while True:
            self.sampler.set_position(epoch, batch * self.cfg.batch_size)
            yield from self.loader
            epoch, batch = epoch + 1, 0

    def train_step(self, images: Tensor, labels: Tensor) -> Optional[dict[str, float]]:
        """One optimiser step; returns the loss terms (means over processes), or None if skipped."""
        memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.net(images)
            terms = self.criterion(output, labels)
        # one all-reduce gives the logged means and, since NaN and inf propagate through the sum,
        # a verdict that every process shares: all step, or all stop or skip
        values = all_reduce_mean(torch.stack([t.detach().float() for t in terms.values()]))
        values = dict(zip(terms, values.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            message = (f'step {self.step + 1}: non-finite loss term(s) '
                       + ', '.join(f'{name} = {values[name]}' for name in bad)
                       + ' (all terms: ' + ', '.join(f'{k} {v:.4g}' for k, v in values.items()) + ')')
            if not self.cfg.skip_nonfinite:
                raise NonFiniteLossError(f'{message}. Stopped before updating the model; the last checkpoint is '
                                         'intact. Lower the lr, set grad_clip, or pass --skip-nonfinite.')
            if self.env.is_main:
                _logger.warning('%s: step skipped (--skip-nonfinite)', message)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms['loss']).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values

    def validate(self) -> dict[str, Any]:
        """The metrics of the validation split, each process scoring its shard."""
        broadcast_buffers(self.model)
        matrix = evaluate({'model': self.model}, self.val_loader, self.num_classes, self.ignore_index,
                          device=self.device)['model'][OUTPUT]
        matrix.all_reduce()
        self.model.train()
        return matrix.compute(self.classes)

    def _validate_and_log(self, bar: tqdm) -> bool:
        """Validate, log, and say whether this is the best mIoU so far."""
        self.val = self.validate()
        is_best = self.best is None or self.val['mIoU'] > self.best['mIoU']
        if is_best:
            self.best = {'step': self.step, 'mIoU': self.val['mIoU']}
        self._log({'kind': 'val', 'step': self.step, 'split': self.cfg.val_split, **self.val})
        if self.env.is_main:
            bar.write(f'step {self.step} {self.cfg.val_split}: '
                      + ' '.join(f'{k} {self.val[k]:.2f}' for k in ('aAcc', 'mIoU', 'mF1', 'mPrecision', 'mRecall')))
        return is_best

    def fit(self, resume: Union[bool, str, Path, None] = None) -> TrainResult:
        cfg = self.cfg
        if resume:
            path = self.checkpoints.latest() if resume is True else Path(resume)
            if path is None:
                raise FileNotFoundError(f'--resume: no checkpoint-*.pt in {self.run_dir}')
            self.resume(path)
        elif self.checkpoints.latest() is not None:
            raise ValueError(f'{self.run_dir} already holds checkpoints: pass --resume to continue that run, '
                             'or choose another --run-dir')
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / 'config.yaml')
            _logger.info('%s: %d steps (%d per epoch) of %d image(s) on %d process(es), run folder %s',
                         cfg.model, self.total_steps, self.steps_per_epoch, cfg.batch_size, self.env.world_size,
                         self.run_dir)
        self.model.train()
        meter = _IntervalMeter(self.step, cfg.batch_size * self.env.world_size)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.env.is_main, dynamic_ncols=True,
                   desc=cfg.model)
        batches = self._batches()
        while self.step < self.total_steps:
            lr = self.scheduler.get_last_lr()[0]
            meter.add(self.train_step(*next(batches)))
            self.scheduler.step()
            self.step += 1
            bar.update()
            last = self.step == self.total_steps
            if self.step % cfg.log_interval == 0 or last:
                record = meter.flush(self.step)
                self._log({'kind': 'train', 'step': self.step, 'epoch': self.step / self.steps_per_epoch, 'lr': lr,
                           **record})
                bar.set_postfix({**{k: f'{v:.3g}' for k, v in record.items() if k != 'images_per_s'},
                                 'lr': f'{lr:.2e}', 'img/s': f'{record["images_per_s"]:.1f}'}, refresh=False)
            is_best = False
            if self.val_loader is not None and (last or (cfg.val_interval and self.step % cfg.val_interval == 0)):
                is_best = self._validate_and_log(bar)
            if last or self.step % cfg.ckpt_interval == 0 or is_best:
                self.save(best=is_best)
        bar.close()
        broadcast_buffers(self.model)
        return TrainResult(self.model, self.step, self.run_dir, self.val, self.best)


def train(cfg: TrainConfig, resume: Union[bool, str, Path, None] = None) -> TrainResult:
    """Run ``cfg``; under ``torchrun`` every process calls this and trains with DDP.

    ``resume=True`` continues from the newest checkpoint of ``cfg.run_dir``, a path from that file.
    Raises ``NonFiniteLossError`` when a loss term is NaN or inf (unless ``cfg.skip_nonfinite``).
    """
    owns_group = not dist.is_initialized()
    env = init_distributed(cfg.device)
    try:
        with _determinism(cfg, env.device):
            return Trainer(cfg, env).fit(resume)
    finally:
        if owns_group:
            cleanup()
