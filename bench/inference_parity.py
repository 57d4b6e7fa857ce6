"""Zero-cost inference: a deployed ``_imachsr`` model against its baseline with the same weights.

For each family the ``_imachsr`` model is built, its BN statistics moved off their defaults by a
few training-mode forwards, and ``deploy()``-ed; the baseline architecture is built and loaded
strictly with the deployed ``state_dict``. Reported: parameter counts (with and without the head
set), the largest output difference, and the inference time of the deployed model, and of the
undeployed one in eval mode, relative to the baseline (interleaved, median of the per-round ratios).

    python bench/inference_parity.py [--batch 1] [--size 512] [--seconds 10]
"""
import copy
from typing import Any

import torch

import common
from zoo import create_model

FAMILIES = ('topformer_base', 'seaformer_base', 'deeplabv3plus_resnet18')
TOLERANCE = 0.03


@torch.no_grad()
def compare(family: str, device: torch.device, args: Any) -> dict[str, Any]:
    """Build, deploy, check equivalence and time one family."""
    model = create_model(f'{family}_imachsr', num_classes=args.num_classes).to(device)
    model.train()
    for _ in range(3):  # non-trivial BN running statistics, so that eval mode uses real ones
        model(torch.randn(2, 3, 128, 128, device=device))
    params_with_heads = common.parameter_count(model)
    undeployed = copy.deepcopy(model).eval()
    deployed = model.deploy().eval()
    baseline = create_model(family, num_classes=args.num_classes).to(device).eval()
    baseline.load_state_dict(deployed.state_dict(), strict=True)
    same_keys = list(baseline.state_dict()) == list(deployed.state_dict())

    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    out_base, out_deployed = baseline(images), deployed(images)
    max_diff = (out_base - out_deployed).abs().max().item()

    with torch.inference_mode():
        times = common.interleaved({'baseline': lambda: baseline(images), 'deployed': lambda: deployed(images),
                                    'undeployed': lambda: undeployed(images)},
                                   args.repeats, args.warmup, common.synchronizer(device), args.seconds,
                                   min_repeats=5)
    deployed_ratio = common.paired_ratio(times, 'deployed', 'baseline')
    return {
        'family': family, 'device': device.type, 'rounds': len(times['baseline']),
        'params_baseline': common.parameter_count(baseline), 'params_deployed': common.parameter_count(deployed),
        'params_with_heads': params_with_heads, 'same_state_dict_keys': same_keys,
        'max_abs_diff': max_diff, 'bitwise_equal': bool(torch.equal(out_base, out_deployed)),
        'baseline_ms': 1e3 * common.median(times['baseline']), 'deployed_ms': 1e3 * common.median(times['deployed']),
        'undeployed_ms': 1e3 * common.median(times['undeployed']),
        'time_ratio': deployed_ratio['ratio'], 'time_ratio_q1': deployed_ratio['q1'],
        'time_ratio_q3': deployed_ratio['q3'], 'time_ratio_of_minima': deployed_ratio['min_ratio'],
        'undeployed_ratio': common.paired_ratio(times, 'undeployed', 'baseline')['ratio'],
        'times_s': times, 'loadavg': common.loadavg(),
    }


def main() -> None:
    parser = common.base_parser(__doc__.split('\n\n')[0])
    parser.add_argument('--families', nargs='+', default=list(FAMILIES))
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cpu, and cuda when present)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--quick', action='store_true', help='5 rounds (a smoke test)')
    args = parser.parse_args()
    common.setup(args)
    args.repeats = args.repeats or (5 if args.quick else None)
    args.seconds = args.seconds or 10
    started = common.loadavg()
    results = []
    for device in common.devices(args.device):
        common.print_header(f'Inference after deploy(): {args.size}x{args.size}, batch {args.batch}, {device.type}, '
                            f'median of N interleaved rounds', device)
        rows = [compare(family, device, args) for family in args.families]
        results += rows
        print(common.table(
            ['model', 'params', 'deployed', 'with heads', 'max |diff|', 'N', 'base ms', 'deployed ms', 'ratio',
             'IQR', 'undeployed x'],
            [[r['family'], r['params_baseline'], r['params_deployed'], r['params_with_heads'], f"{r['max_abs_diff']:.1e}",
              r['rounds'], r['baseline_ms'], r['deployed_ms'], r['time_ratio'], f"{r['time_ratio_q1']:.3f}-{r['time_ratio_q3']:.3f}",
              r['undeployed_ratio']] for r in rows]))
        print(f'\nTarget: identical parameter count and state_dict keys, time ratio 1.00 +- {TOLERANCE:.2f}')
        for r in rows:
            ok = (r['params_baseline'] == r['params_deployed'] and r['same_state_dict_keys']
                  and abs(r['time_ratio'] - 1) <= TOLERANCE)
            print(f"  {r['family']:<24} params equal: {r['params_baseline'] == r['params_deployed']}, keys equal: "
                  f"{r['same_state_dict_keys']}, outputs bitwise equal: {r['bitwise_equal']}, ratio "
                  f"{r['time_ratio']:.3f}  {'met' if ok else 'NOT met'}")
    common.write_results('inference_parity', args, results, started,
                         next((d for d in common.devices(args.device) if d.type == 'cuda'), None))


if __name__ == '__main__':
    main()
