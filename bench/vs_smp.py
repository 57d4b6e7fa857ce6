"""Our ``deeplabv3plus_resnet18`` against segmentation_models_pytorch's DeepLabV3Plus('resnet18').

Both from scratch, same classes and input, timed in one process with the two interleaved: an
Adam training step (forward + cross-entropy + backward + step) and eval-mode inference. Also shows
which input sizes each accepts: smp demands multiples of 16, ours pads internally.

    python bench/vs_smp.py [--batch 4] [--size 512] [--infer-batch 1] [--profile]
"""
from typing import Any, Callable

import torch
from torch import Tensor, nn

import common
from zoo import create_model

ODD_SIZE = (361, 479)
TARGET = 1.0


def train_step(model: nn.Module, criterion: Callable[[Any, Tensor], Tensor], images: Tensor,
               labels: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def accepts(model: nn.Module, size: tuple[int, int], num_classes: int, device: torch.device) -> str:
    """The output shape for a ``size`` input, or the error raised."""
    with torch.inference_mode():
        try:
            return str(tuple(model(torch.randn(1, 3, *size, device=device)).shape))
        except Exception as error:  # smp raises RuntimeError; report whatever comes
            return f'{type(error).__name__}: {str(error).splitlines()[0]}'


def profile(fns: dict[str, Callable[[], None]], rows: int = 15) -> dict[str, str]:
    """torch.profiler tables (self CPU time) of one call of each function."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    tables = {}
    for name, fn in fns.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        tables[name] = prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)
        print(f'\n{name}:\n{tables[name]}')
    return tables


def main() -> None:
    import segmentation_models_pytorch as smp

    parser = common.base_parser(__doc__.split('\n\n')[0])
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cpu, and cuda when present)')
    parser.add_argument('--batch', type=int, default=4, help='training batch')
    parser.add_argument('--infer-batch', type=int, default=1)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--profile', action='store_true', help='print torch.profiler tables of a train step')
    parser.add_argument('--quick', action='store_true', help='2 rounds (a smoke test)')
    args = parser.parse_args()
    common.setup(args)
    args.repeats = args.repeats or (2 if args.quick else None)
    args.seconds = args.seconds or 40
    started = common.loadavg()
    results = []
    for device in common.devices(args.device):
        common.print_header(f'deeplabv3plus_resnet18 vs smp.DeepLabV3Plus(resnet18), {args.num_classes} classes, '
                            f'{device.type}, median of interleaved rounds', device)
        ours = create_model('deeplabv3plus_resnet18', num_classes=args.num_classes).to(device)
        theirs = smp.DeepLabV3Plus('resnet18', encoder_weights=None, classes=args.num_classes).to(device)
        models = {'ours': ours, 'smp': theirs}
        ours_loss = ours.criterion()  # plain cross-entropy for a model without a head set
        criteria = {'ours': lambda out, y: ours_loss(out, y)['loss'], 'smp': nn.CrossEntropyLoss(ignore_index=255)}
        images = torch.randn(args.batch, 3, args.size, args.size, device=device)
        labels = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)
        sync = common.synchronizer(device)

        for model in models.values():
            model.train()
        steps = {name: train_step(m, criteria[name], images, labels) for name, m in models.items()}
        load_train = common.loadavg()
        train_times = common.interleaved(steps, args.repeats, args.warmup, sync, args.seconds)
        tables = profile(steps) if args.profile else {}

        for model in models.values():
            model.eval()
        infer_images = images[:args.infer_batch].contiguous()
        with torch.inference_mode():
            infer_times = common.interleaved({name: (lambda m=m: m(infer_images)) for name, m in models.items()},
                                             args.repeats and 3 * args.repeats, 2, sync, args.seconds / 3,
                                             min_repeats=5)
        sizes = {f'{h}x{w}': {name: accepts(m, (h, w), args.num_classes, device) for name, m in models.items()}
                 for h, w in (ODD_SIZE, (args.size, args.size))}
        result = {
            'device': device.type,
            'params': {name: common.parameter_count(m) for name, m in models.items()},
            'rounds': {'train': len(train_times['ours']), 'infer': len(infer_times['ours'])},
            'train_s': {name: common.median(t) for name, t in train_times.items()},
            'infer_ms': {name: 1e3 * common.median(t) for name, t in infer_times.items()},
            'train_ratio': common.paired_ratio(train_times, 'ours', 'smp'),
            'infer_ratio': common.paired_ratio(infer_times, 'ours', 'smp'),
            'train_times_s': train_times, 'infer_times_s': infer_times, 'input_sizes': sizes,
            'loadavg': [load_train, common.loadavg()], 'profile': tables,
        }
        results.append(result)
        print(common.table(
            ['', 'params', f'train step s (batch {args.batch})', f'inference ms (batch {args.infer_batch})'],
            [[name, result['params'][name], result['train_s'][name], result['infer_ms'][name]] for name in models]))
        for size, outcome in sizes.items():
            print(f'{size} input: ' + '; '.join(f'{name} -> {text}' for name, text in outcome.items()))
        tr, ir = result['train_ratio'], result['infer_ratio']
        print(f"\nours / smp, median of the per-round ratios (IQR; ratio of the fastest runs):\n"
              f"  train step {tr['ratio']:.3f} ({tr['q1']:.3f}-{tr['q3']:.3f}; {tr['min_ratio']:.3f}), "
              f"{result['rounds']['train']} rounds\n"
              f"  inference  {ir['ratio']:.3f} ({ir['q1']:.3f}-{ir['q3']:.3f}; {ir['min_ratio']:.3f}), "
              f"{result['rounds']['infer']} rounds\ntarget <= {TARGET:.2f}: "
              f"{'met' if max(tr['ratio'], ir['ratio']) <= TARGET else 'NOT met'}")
    common.write_results('vs_smp', args, results, started,
                         next((d for d in common.devices(args.device) if d.type == 'cuda'), None),
                         smp_version=smp.__version__)


if __name__ == '__main__':
    main()
