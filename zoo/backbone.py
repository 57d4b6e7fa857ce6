"""The ``SupervisableBackbone`` contract: transition points, point selection, one-pass capture."""
import contextlib
import math
import re
from typing import Iterator, Literal, Optional, Sequence, TypedDict, Union

import torch
from torch import Tensor, nn

PointKind = Literal['downsample', 'stage', 'bottleneck', 'attention', 'skip', 'norm', 'fusion']
POINT_KINDS: tuple[str, ...] = PointKind.__args__

PointSpec = Union[None, str, int, Sequence[Union[str, int]]]


class TransitionPoint(TypedDict):
    """A candidate point for supervision: the output of ``module`` (a path below the backbone).

    A plain dict, like the entries of timm's ``feature_info``, which it extends with
    ``name`` (unique among the backbone's points) and ``kind`` (one of ``POINT_KINDS``).
    """
    name: str
    module: str
    num_chs: int
    reduction: int
    kind: str


def transition_point(name: str, module: str, num_chs: int, reduction: int, kind: str) -> TransitionPoint:
    if kind not in POINT_KINDS:
        raise ValueError(f'point {name!r}: kind {kind!r} is not one of {POINT_KINDS}')
    return TransitionPoint(name=name, module=module, num_chs=int(num_chs), reduction=int(reduction), kind=kind)


class SupervisableBackbone(nn.Module):
    """A backbone whose intermediate tensors can be supervised.

    Subclasses set
      * ``feature_info``: every candidate ``TransitionPoint``, in forward order;
      * ``out_points``: the names of the points the decoder consumes, shallow to deep;
      * ``auto_points``: the ``select_points`` spec that ``points='auto'`` stands for;
    and implement ``forward_features(x) -> list[Tensor]`` (the decoder's features).
    ``forward(x, points)`` returns those features and the tensors at ``points`` from the same
    pass: forward hooks are placed on the points' modules for that one call only.
    """
    feature_info: list[TransitionPoint]
    out_points: tuple[str, ...]
    auto_points: str = 'input:3'
    in_chans: int = 3

    def forward_features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, points: Sequence[str] = ()) -> tuple[list[Tensor], dict[str, Tensor]]:
        if not points:
            return self.forward_features(x), {}
        with capture_points(self, [self.point(name) for name in points]) as taps:
            features = self.forward_features(x)
        return features, taps

    @property
    def point_names(self) -> list[str]:
        return [p['name'] for p in self.feature_info]

    def point_index(self, name: str) -> int:
        for i, p in enumerate(self.feature_info):
            if p['name'] == name:
                return i
        raise ValueError(f'{type(self).__name__} has no transition point {name!r}; '
                         f'valid points: {self.point_names}')

    def point(self, name: str) -> TransitionPoint:
        return self.feature_info[self.point_index(name)]

    @property
    def out_channels(self) -> list[int]:
        return [self.point(name)['num_chs'] for name in self.out_points]

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of this, so every stride divides the padded size."""
        return max(p['reduction'] for p in self.feature_info)

    def select_points(self, spec: PointSpec = 'auto') -> list[TransitionPoint]:
        return select_points(self.feature_info, self.auto_points if spec == 'auto' else spec)


@contextlib.contextmanager
def capture_points(root: nn.Module, points: Sequence[TransitionPoint]) -> Iterator[dict[str, Tensor]]:
    """Collect the output of each point's module during the ``with`` body; hooks end with it."""
    taps: dict[str, Tensor] = {}
    handles = []

    def hook_for(point: TransitionPoint):
        def hook(module, args, output):
            if point['name'] in taps:
                raise RuntimeError(f'point {point["name"]!r}: module {point["module"]!r} ran twice '
                                   'in one forward, so its output is ambiguous')
            if not (isinstance(output, Tensor) and output.dim() == 4):
                raise RuntimeError(f'point {point["name"]!r}: module {point["module"]!r} returned '
                                   f'{_describe(output)}, not an NCHW tensor')
            taps[point['name']] = output
        return hook

    try:
        for point in points:
            handles.append(root.get_submodule(point['module']).register_forward_hook(hook_for(point)))
        yield taps
    finally:
        for handle in handles:
            handle.remove()
    missing = [p['name'] for p in points if p['name'] not in taps]
    if missing:
        raise RuntimeError(f'points {missing} were never reached in the forward pass')
    ordered = {p['name']: taps[p['name']] for p in points}
    taps.clear()
    taps.update(ordered)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f'a {value.dim()}-D tensor of shape {tuple(value.shape)}'
    return f'a {type(value).__name__}'


_RULE = re.compile(r'^(uniform|input|central|output|every):(\d+)(?::(\d+))?$')


def select_points(candidates: Sequence[TransitionPoint], spec: PointSpec) -> list[TransitionPoint]:
    """Choose supervision points among ``candidates`` (in forward order), by the paper's rules.

    With N candidates and K points:
      * ``'stages'``: the points of kind ``stage``;
      * ``'uniform:K'``: K points evenly spread inside the sequence, candidate
        ``round((j + 1) (N + 1) / (K + 1)) - 1`` for j = 0..K-1;
      * ``'input:K'`` / ``'output:K'``: the K candidates nearest the input / the output;
      * ``'central:K'`` (or ``'central:K:D'``): K candidates centred in the sequence, D apart
        (D = 1: consecutive);
      * ``'every:D'`` (or ``'every:D:K'``): candidates 0, D, 2D, ... (the first K of them);
      * names or indices (a list, or one comma-separated string); negative indices count from
        the end. ``None`` or ``'none'`` selects nothing.
    The result is in forward order, without repeats.
    """
    n = len(candidates)
    names = [p['name'] for p in candidates]
    if spec is None or spec == 'none' or (not isinstance(spec, str) and isinstance(spec, Sequence) and not spec):
        return []
    if isinstance(spec, str) and spec == 'stages':
        indices = [i for i, p in enumerate(candidates) if p['kind'] == 'stage']
        if not indices:
            raise ValueError(f"points='stages': no candidate has kind 'stage' (kinds: "
                             f"{sorted({p['kind'] for p in candidates})})")
    elif isinstance(spec, str) and spec.split(':')[0] in ('uniform', 'input', 'central', 'output', 'every'):
        indices = _rule_indices(spec, n)
    else:
        items = spec.split(',') if isinstance(spec, str) else [spec] if isinstance(spec, int) else list(spec)
        indices = [_explicit_index(item, names) for item in items]
        repeated = sorted({names[i] for i in indices if indices.count(i) > 1})
        if repeated:
            raise ValueError(f'points {repeated} were selected more than once')
    return [candidates[i] for i in sorted(set(indices))]


def _rule_indices(spec: str, n: int) -> list[int]:
    match = _RULE.match(spec)
    if not match:
        raise ValueError(f'points={spec!r} is not a rule: use auto, stages, uniform:K, input:K, '
                         'central:K[:D], output:K, every:D[:K] or explicit names/indices')
    rule, value, limit = match.group(1), int(match.group(2)), match.group(3)
    if value < 1 or (limit is not None and int(limit) < 1):
        raise ValueError(f'points={spec!r}: the numbers must be at least 1')
    if rule == 'every':
        indices = list(range(0, n, value))
        if limit is not None:
            if int(limit) > len(indices):
                raise ValueError(f'points={spec!r}: only {len(indices)} points lie {value} apart '
                                 f'among {n} candidates')
            indices = indices[:int(limit)]
        return indices
    if rule == 'central':
        distance = 1 if limit is None else int(limit)
        span = distance * (value - 1) + 1
        if span > n:
            raise ValueError(f'points={spec!r}: {value} points {distance} apart span {span} candidates, '
                             f'but there are {n}')
        start = (n - span) // 2
        return list(range(start, start + span, distance))
    if limit is not None:
        raise ValueError(f'points={spec!r}: only every:D and central:K take a second number')
    if value > n:
        raise ValueError(f'points={spec!r} asks for {value} points, but there are {n} candidates')
    if rule == 'input':
        return list(range(value))
    if rule == 'output':
        return list(range(n - value, n))
    return [math.floor((j + 1) * (n + 1) / (value + 1) + 0.5) - 1 for j in range(value)]


def _explicit_index(item: Union[str, int], names: list[str]) -> int:
    if isinstance(item, str):
        item = item.strip()
        if re.fullmatch(r'-?\d+', item):
            item = int(item)
        elif item in names:
            return names.index(item)
        else:
            raise ValueError(f'unknown point {item!r}; valid points: {names}')
    if not -len(names) <= item < len(names):
        raise ValueError(f'point index {item} is out of range for {len(names)} candidates: {names}')
    return item % len(names)


@torch.no_grad()
def trace_transition_points(model: nn.Module, in_chans: int = 3, size: int = 256,
                            prefix: str = '') -> list[TransitionPoint]:
    """Find transition points of any CNN by running it once on a ``size`` x ``size`` input.

    The blocks are the top-level children and, for a container child (``Sequential``,
    ``ModuleList``), its children. A block whose NCHW output has a larger stride than any block
    before it is a ``downsample`` point; the last block of a container and the last block
    before the stride grows are ``stage`` points.
    """
    blocks: list[tuple[str, bool]] = []  # (path, ends a top-level block)
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child):
            inner = list(child.named_children())
            blocks += [(f'{name}.{sub}', i == len(inner) - 1) for i, (sub, _) in enumerate(inner)]
        else:
            blocks.append((name, True))
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook_for(path: str):
        def hook(module, args, output):
            if isinstance(output, Tensor) and output.dim() == 4 and path not in shapes:
                shapes[path] = tuple(output.shape)
                order.append(path)
        return hook

    handles = [model.get_submodule(path).register_forward_hook(hook_for(path)) for path, _ in blocks]
    was_training = model.training
    model.eval()
    try:
        forward = getattr(model, 'forward_features', model.forward)
        forward(torch.zeros(1, in_chans, size, size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    reductions = [max(1, round(size / shapes[path][2])) for path in order]
    container_ends = {path for path, end in blocks if end and '.' in path}
    points: list[TransitionPoint] = []
    for i, path in enumerate(order):
        grows = reductions[i] > max(reductions[:i], default=1)
        last_at_stride = i + 1 == len(order) or reductions[i + 1] != reductions[i]
        if grows or last_at_stride or path in container_ends:
            kind = 'downsample' if grows else 'stage'
            points.append(transition_point(path, prefix + path, shapes[path][1], reductions[i], kind))
    if not points:
        raise RuntimeError(f'{type(model).__name__}: the shape trace found no block with an NCHW output')
    return points
