"""Point selection rules and the one-pass capture of the SupervisableBackbone contract."""
import pytest
import torch
from torch import nn

from zoo.backbone import capture_points, select_points, trace_transition_points, transition_point

CANDIDATES = [transition_point(f'p{i}', f'm{i}', 8, 2 ** (1 + i // 2), 'stage' if i % 2 else 'downsample')
              for i in range(7)]


def names(spec):
    return [p['name'] for p in select_points(CANDIDATES, spec)]


@pytest.mark.parametrize('spec, expected', [
    ('input:2', ['p0', 'p1']),
    ('output:3', ['p4', 'p5', 'p6']),
    ('central:3', ['p2', 'p3', 'p4']),
    ('central:2', ['p2', 'p3']),
    ('central:3:2', ['p1', 'p3', 'p5']),
    ('central:3:3', ['p0', 'p3', 'p6']),
    ('uniform:1', ['p3']),
    ('uniform:3', ['p1', 'p3', 'p5']),
    ('uniform:7', [f'p{i}' for i in range(7)]),
    ('every:3', ['p0', 'p3', 'p6']),
    ('every:2:2', ['p0', 'p2']),
    ('stages', ['p1', 'p3', 'p5']),
    (['p5', 'p1'], ['p1', 'p5']),
    ('p5, p1', ['p1', 'p5']),
    ([0, -1], ['p0', 'p6']),
    ('2', ['p2']),
    (None, []),
    ('none', []),
    ([], []),
])
def test_rules(spec, expected):
    assert names(spec) == expected


@pytest.mark.parametrize('spec, message', [
    ('nope', r"unknown point 'nope'; valid points: \['p0'"),
    (['p1', 'bad'], "unknown point 'bad'"),
    ('input:8', 'asks for 8 points, but there are 7'),
    ('uniform:0', 'at least 1'),
    ('every:3:4', 'only 3 points lie 3 apart'),
    ('input:2:1', 'only every:D and central:K take a second number'),
    ('central:3:4', '3 points 4 apart span 9 candidates, but there are 7'),
    ('central:2:0', 'at least 1'),
    (9, 'out of range for 7 candidates'),
    (['p1', 1], 'selected more than once'),
])
def test_bad_specs_fail_with_the_valid_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        names(spec)


def test_kind_is_validated():
    with pytest.raises(ValueError, match="kind 'pool'"):
        transition_point('x', 'x', 1, 1, 'pool')


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                                  nn.Conv2d(8, 8, 3, padding=1))
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.flat(self.body(self.stem(x)))


def test_trace_finds_downsampling_and_stage_ends():
    points = trace_transition_points(Tiny(), size=32)
    assert [(p['name'], p['reduction'], p['kind']) for p in points] == [
        ('stem', 2, 'downsample'), ('body.0', 2, 'stage'), ('body.1', 4, 'downsample'), ('body.2', 4, 'stage')]


def test_capture_leaves_no_hooks_and_reports_unreached_points():
    model = Tiny()
    points = trace_transition_points(model, size=32)
    with capture_points(model, points) as taps:
        model(torch.randn(1, 3, 32, 32))
    assert list(taps) == [p['name'] for p in points] and taps['body.2'].shape == (1, 8, 8, 8)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match='never reached'):
        with capture_points(model, points):
            model.stem(torch.randn(1, 3, 32, 32))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match='not an NCHW tensor'):
        with capture_points(model, [transition_point('flat', 'flat', 8, 4, 'stage')]):
            model(torch.randn(1, 3, 32, 32))
