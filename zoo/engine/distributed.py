"""Process groups for ``torchrun``: gloo on CPU, nccl on CUDA; a single process needs none."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, and the device it computes on."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = 'auto') -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``), if any; each process takes the CUDA device of its local rank."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError('device cuda was asked for, but torch sees no CUDA device')
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if use_cuda else 'gloo', device_id=target if use_cuda else None)
    return DistEnv(rank, world_size, local_rank, target)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes (itself without a process group)."""
    if dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics drift apart without SyncBN)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
