"""zoo.metrics against a brute-force per-pixel count."""
import math

import numpy as np
import pytest
import torch

from zoo.metrics import METRICS, ConfusionMatrix, format_table, scores

IGNORE = 255


def brute_force(pairs, num_classes):
    """Per-pixel TP/FP/FN counts in plain python, then mmseg's definitions, NaN where undefined."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    correct = total = 0
    for pred, target in pairs:
        for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
            if t == IGNORE:
                continue
            total += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fp[p] += 1
                fn[t] += 1

    def ratio(a, b):
        return 100 * a / b if b else math.nan

    per_class = {
        'IoU': [ratio(tp[c], tp[c] + fp[c] + fn[c]) for c in range(num_classes)],
        'F1': [ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]) for c in range(num_classes)],
        'Precision': [ratio(tp[c], tp[c] + fp[c]) for c in range(num_classes)],
        'Recall': [ratio(tp[c], tp[c] + fn[c]) for c in range(num_classes)],
    }
    result = {'aAcc': ratio(correct, total)}
    for name, values in per_class.items():
        defined = [v for v in values if not math.isnan(v)]
        result[f'm{name}'] = sum(defined) / len(defined)
    return result | per_class


def random_pairs(rng, num_classes, absent, shapes):
    """Random label maps with ignored pixels and 40 % agreement; classes in ``absent`` occur in
    neither map, class 0 only in the prediction and class 1 only in the truth."""
    present = [c for c in range(num_classes) if c not in absent]
    pairs = []
    for shape in shapes:
        pred = rng.choice([c for c in present if c != 1], size=shape)
        target = rng.choice([c for c in present if c != 0], size=shape)
        target = np.where((rng.random(shape) < 0.4) & (pred != 0), pred, target)
        target[rng.random(shape) < 0.2] = IGNORE
        pairs.append((pred, target))
    return pairs


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    pairs = random_pairs(rng, num_classes, absent={3, 5}, shapes=[(2, 13, 17), (1, 9, 11), (3, 8, 8)])
    metric = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    for pred, target in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = metric.compute()
    expected = brute_force(pairs, num_classes)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-12, atol=1e-9, equal_nan=True, err_msg=key)
    # absent from both: IoU/F1 undefined, left out of the means; 0 never true: Recall undefined;
    # 1 never predicted: Precision undefined but IoU, F1, Recall are 0
    for c in (3, 5):
        assert all(math.isnan(result[m][c]) for m in ('IoU', 'F1', 'Precision', 'Recall'))
    assert math.isnan(result['Recall'][0]) and result['IoU'][0] == 0
    assert math.isnan(result['Precision'][1]) and result['IoU'][1] == result['F1'][1] == result['Recall'][1] == 0


def test_ignored_pixels_never_count_even_with_wrong_predictions():
    target = torch.tensor([[0, 1, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 0]])
    metric = ConfusionMatrix(2)
    metric.update(pred, target)
    assert metric.matrix.tolist() == [[1, 0], [0, 1]]
    result = metric.compute(['a', 'b'])
    assert {m: result[m] for m in METRICS} == {m: 100.0 for m in METRICS}
    assert result['classes'] == ['a', 'b']


def test_update_is_additive_and_reset_clears():
    rng = np.random.default_rng(3)
    pred, target = (torch.from_numpy(rng.integers(0, 4, (2, 10, 10))) for _ in range(2))
    once, twice = ConfusionMatrix(4), ConfusionMatrix(4)
    once.update(torch.cat([pred, pred]), torch.cat([target, target]))
    twice.update(pred, target)
    twice.update(pred, target)
    assert torch.equal(once.matrix, twice.matrix)
    twice.reset()
    assert twice.matrix.sum() == 0
    assert math.isnan(twice.compute()['mIoU'])


def test_bad_values_and_shapes_are_named():
    metric = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r'target holds values \[7\]'):
        metric.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, IGNORE]))
    with pytest.raises(ValueError, match=r'prediction holds values \[3\]'):
        metric.update(torch.tensor([0, 3, 1, 1]), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match='does not match'):
        metric.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match='2 class names for 3 classes'):
        scores(metric.matrix, ['a', 'b'])


def test_format_table_lists_every_class_and_metric():
    metric = ConfusionMatrix(2)
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    text = format_table(metric.compute(['road', 'sky']))
    assert 'road' in text and 'sky' in text and all(m in text for m in METRICS)
