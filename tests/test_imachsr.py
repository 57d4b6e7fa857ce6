"""The iMacHSR objective against brute-force numpy computations on tiny tensors."""
import math

import numpy as np
import pytest
import torch

from zoo.imachsr import (DimensionAdapter, HeadSet, IMacHSRLoss, mutual_information_loss, negative_entropy,
                         pool_labels, supervision_cfg)
from zoo.segmentor import SegmentorOutput

IGNORE = 255


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def brute_force_cells(target: np.ndarray, h: int, w: int, num_classes: int) -> np.ndarray:
    """counts[b, i, j]: valid pixels of class b whose centre falls in cell (i, j)."""
    height, width = target.shape
    counts = np.zeros((num_classes, h, w))
    for y in range(height):
        for x in range(width):
            label = target[y, x]
            if label != IGNORE:
                counts[label, y * h // height, x * w // width] += 1
    return counts


def brute_force_mi(logits: np.ndarray, target: np.ndarray, eps: float = 1e-8) -> float:
    """-mean_n I_n / log C, written out from the formula in DESIGN.md."""
    n, num_classes, h, w = logits.shape
    infos = []
    for image in range(n):
        p = softmax(logits[image])
        counts = brute_force_cells(target[image], h, w, num_classes)
        weights = counts.sum(0)
        if weights.sum() == 0:
            continue
        joint = np.zeros((num_classes, num_classes))
        for i in range(h):
            for j in range(w):
                if weights[i, j] == 0:
                    continue
                q = counts[:, i, j] / weights[i, j]
                joint += weights[i, j] * np.outer(p[:, i, j], q)
        joint /= weights.sum()
        p_a, p_b = joint.sum(1), joint.sum(0)
        info = 0.0
        for a in range(num_classes):
            for b in range(num_classes):
                info += joint[a, b] * (math.log(joint[a, b] + eps) - math.log(p_a[a] + eps) - math.log(p_b[b] + eps))
        infos.append(info)
    return -float(np.mean(infos)) / math.log(num_classes)


def brute_force_ne(logits: np.ndarray, target: np.ndarray) -> float:
    n, num_classes, h, w = logits.shape
    total, weight = 0.0, 0.0
    for image in range(n):
        p = softmax(logits[image])
        cells = brute_force_cells(target[image], h, w, num_classes).sum(0)
        for i in range(h):
            for j in range(w):
                total += cells[i, j] * sum(p[a, i, j] * math.log(p[a, i, j]) for a in range(num_classes))
                weight += cells[i, j]
    return total / weight / math.log(num_classes)


def random_case(seed: int, n=2, num_classes=4, size=(3, 4), full=(12, 16), ignore_share=0.2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, num_classes, *size)) * 2
    target = rng.integers(0, num_classes, size=(n, *full))
    target[rng.random(target.shape) < ignore_share] = IGNORE
    return logits, target


@pytest.mark.parametrize('seed, full', [(0, (12, 16)), (1, (13, 17)), (2, (3, 4))])
def test_pool_labels_matches_brute_force(seed, full):
    _, target = random_case(seed, full=full)
    counts = pool_labels(torch.from_numpy(target), (3, 4), 4, IGNORE).numpy()
    for image in range(target.shape[0]):
        np.testing.assert_allclose(counts[image], brute_force_cells(target[image], 3, 4, 4))


@pytest.mark.parametrize('seed, full', [(0, (12, 16)), (1, (13, 17)), (3, (6, 8))])
def test_mutual_information_matches_brute_force(seed, full):
    logits, target = random_case(seed, full=full)
    got = mutual_information_loss(torch.from_numpy(logits), torch.from_numpy(target), IGNORE)
    assert got.item() == pytest.approx(brute_force_mi(logits, target), rel=1e-5, abs=1e-7)


def test_negative_entropy_matches_brute_force():
    logits, target = random_case(4)
    got = negative_entropy(torch.from_numpy(logits), torch.from_numpy(target), IGNORE)
    assert got.item() == pytest.approx(brute_force_ne(logits, target), rel=1e-5)
    no_target = negative_entropy(torch.from_numpy(logits))
    p = softmax(np.moveaxis(logits, 1, 0).reshape(4, -1))
    assert no_target.item() == pytest.approx((p * np.log(p)).sum(0).mean() / math.log(4), rel=1e-5)


def test_ranges_and_extremes():
    target = torch.arange(4).repeat_interleave(4).view(1, 4, 4)  # rows of classes 0..3
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    # A perfect (and equally a perfectly relabelled) prediction of 4 balanced classes: I = log 4.
    assert mutual_information_loss(perfect, target).item() == pytest.approx(-1.0, abs=1e-4)
    assert mutual_information_loss(perfect[:, [2, 0, 3, 1]], target).item() == pytest.approx(-1.0, abs=1e-4)
    assert mutual_information_loss(torch.zeros(1, 4, 4, 4), target).item() == pytest.approx(0.0, abs=1e-6)
    assert negative_entropy(torch.zeros(1, 4, 4, 4), target).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_entropy(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    logits, target = random_case(5)
    assert -1 <= mutual_information_loss(torch.from_numpy(logits), torch.from_numpy(target)).item() <= 0
    assert -1 <= negative_entropy(torch.from_numpy(logits), torch.from_numpy(target)).item() <= 0


def test_mutual_information_is_invariant_to_relabelling_the_adapter():
    logits, target = random_case(6)
    logits, target = torch.from_numpy(logits), torch.from_numpy(target)
    permuted = logits[:, torch.tensor([3, 1, 0, 2])]
    assert mutual_information_loss(permuted, target).item() == pytest.approx(
        mutual_information_loss(logits, target).item(), rel=1e-6)


def test_ignored_pixels_contribute_nothing():
    logits, target = random_case(7, ignore_share=0.3)
    logits, target = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(target)
    # Ignored pixels count as nothing; labelling them instead changes both terms.
    labelled = torch.where(target == IGNORE, 0, target)
    for loss in (mutual_information_loss, negative_entropy):
        assert loss(logits, labelled).item() != pytest.approx(loss(logits, target).item())
    # A cell with only ignored pixels gets no gradient from either term.
    target = target.clone()
    target[:, :4, :4] = IGNORE  # cell (0, 0) of the 3 x 4 grid
    (mutual_information_loss(logits, target) + negative_entropy(logits, target)).backward()
    assert logits.grad[:, :, 0, 0].abs().max().item() == 0
    assert logits.grad.abs().sum().item() > 0


def test_all_ignored_batch_gives_zero_with_a_graph():
    logits = torch.randn(2, 4, 3, 4, requires_grad=True)
    target = torch.full((2, 12, 16), IGNORE)
    loss = mutual_information_loss(logits, target) + negative_entropy(logits, target)
    assert loss.item() == 0
    loss.backward()


def test_labels_outside_the_class_range_are_an_error():
    with pytest.raises(ValueError, match=r'outside 0\.\.3'):
        mutual_information_loss(torch.randn(1, 4, 2, 2), torch.full((1, 4, 4), 7))


def _output(logits, aux, features=None, padded=None):
    return SegmentorOutput(logits, aux, features or {}, padded or tuple(logits.shape[-2:]))


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 12, 16)
    aux = {'a': torch.randn(2, 4, 6, 8), 'b.c': torch.randn(2, 4, 3, 4)}
    target = torch.randint(0, 4, (2, 12, 16))
    terms = IMacHSRLoss(alpha={'a': 0.5, 'b.c': 1.0}, beta=0.2)(_output(logits, aux), target)
    assert list(terms) == ['loss_ce', 'a.loss_mi', 'a.loss_ne', 'b.c.loss_mi', 'b.c.loss_ne', 'loss']
    assert terms['a.loss_mi'].item() == pytest.approx(mutual_information_loss(aux['a'], target).item())
    assert terms['b.c.loss_ne'].item() == pytest.approx(negative_entropy(aux['b.c'], target).item())
    expected = (terms['loss_ce'] + 0.5 * terms['a.loss_mi'] + 0.2 * terms['a.loss_ne']
                + terms['b.c.loss_mi'] + 0.2 * terms['b.c.loss_ne'])
    assert terms['loss'].item() == pytest.approx(expected.item())
    # Plain logits (eval mode, or a baseline): cross-entropy alone.
    plain = IMacHSRLoss()(logits, target)
    assert set(plain) == {'loss_ce', 'loss'} and plain['loss'] == plain['loss_ce']


def test_deep_supervision_is_cross_entropy_at_the_points():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 12, 16), torch.randint(0, 4, (2, 12, 16))
    target[0, :5] = IGNORE
    aux = {'p': torch.randn(2, 4, 6, 8)}
    terms = IMacHSRLoss(alpha=0.4, beta=0.0, point_loss='ce')(_output(logits, aux), target)
    assert list(terms) == ['loss_ce', 'p.loss_ce', 'loss']
    # CE against area-pooled labels == CE of the nearest-upsampled logits at full resolution.
    upsampled = aux['p'].repeat_interleave(2, 2).repeat_interleave(2, 3)
    reference = torch.nn.functional.cross_entropy(upsampled, target, ignore_index=IGNORE)
    assert terms['p.loss_ce'].item() == pytest.approx(reference.item(), rel=1e-5)
    assert terms['loss'].item() == pytest.approx((terms['loss_ce'] + 0.4 * terms['p.loss_ce']).item())


def test_labels_are_padded_like_the_input():
    """Adapters see the padded input: labels are padded with the ignore index, not stretched."""
    torch.manual_seed(2)
    target = torch.randint(0, 4, (1, 10, 14))
    aux = {'p': torch.randn(1, 4, 4, 4)}  # stride 4 on the 16 x 16 padded input
    terms = IMacHSRLoss()(_output(torch.randn(1, 4, 10, 14), aux, padded=(16, 16)), target)
    padded = torch.nn.functional.pad(target, (0, 2, 0, 6), value=IGNORE)
    assert terms['p.loss_mi'].item() == pytest.approx(mutual_information_loss(aux['p'], padded).item())


def test_negative_entropy_on_features():
    torch.manual_seed(3)
    features = {'p': torch.randn(1, 8, 3, 4)}
    aux = {'p': torch.randn(1, 4, 3, 4)}
    target = torch.randint(0, 4, (1, 12, 16))
    terms = IMacHSRLoss(ne_on='features')(_output(torch.randn(1, 4, 12, 16), aux, features), target)
    assert terms['p.loss_ne'].item() == pytest.approx(negative_entropy(features['p'], target).item())


def test_weights_must_name_supervised_points():
    with pytest.raises(ValueError, match="not supervised"):
        supervision_cfg('imachsr', ['a'], alpha={'b': 1.0})
    with pytest.raises(ValueError, match='beta must be 0'):
        supervision_cfg('ds', ['a'], beta=0.1)
    cfg = supervision_cfg('imachsr', ['a', 'b'], alpha={'a': 1.0})
    assert cfg.alpha == {'a': 1.0, 'b': 0.4} and cfg.beta == {'a': 0.1, 'b': 0.1}


def test_head_set_and_gradients_reach_adapter_and_backbone():
    torch.manual_seed(4)
    backbone = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
    heads = HeadSet([dict(name='stem.conv', module='x', num_chs=8, reduction=4, kind='stage')], 5)
    assert isinstance(heads.adapters['stem_conv'], DimensionAdapter)
    image, target = torch.randn(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16))
    features = {'stem.conv': backbone(image)}
    aux = heads(features)
    terms = IMacHSRLoss()(_output(torch.randn(2, 5, 16, 16), aux, features), target)
    (terms['stem.conv.loss_mi'] + terms['stem.conv.loss_ne']).backward()
    assert backbone.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
