"""``zoo`` command line (also ``python -m zoo``)."""
import argparse
import sys
from typing import Optional, Sequence

import torch


def _list(args: argparse.Namespace) -> int:
    import zoo
    names = zoo.list_models(args.filter or '', pretrained=args.pretrained, include_aliases=args.aliases)
    print('\n'.join(names) if names else f'no model matches {args.filter!r}')
    return 0


def _demo(args: argparse.Namespace) -> int:
    """One iMacHSR training step on the embedded CamVid sample, then the deployed model's prediction."""
    import zoo
    from zoo.data import SAMPLE_ROOT, build_transforms, create_dataset

    torch.manual_seed(0)
    dataset = create_dataset('camvid', SAMPLE_ROOT, 'val', transform=build_transforms(train=False))
    print(dataset.describe())
    pairs = [dataset[i] for i in range(args.images)]
    images = torch.stack([image for image, _ in pairs])
    labels = torch.stack([label for _, label in pairs]).long()
    model = zoo.create_model(args.model, num_classes=dataset.num_classes).train()
    if model.supervision is None:
        raise ValueError(f'{args.model} has no head set: pick an _imachsr or _ds model')
    with_heads = _count(model)
    print(f'\nmodel {args.model} ({model.architecture}): {with_heads / 1e6:.2f} M parameters with the '
          f'head set, {model.supervision.kind} at points {model.supervision.points}')
    print(f'input {tuple(images.shape)}, labels {tuple(labels.shape)}')
    criterion = model.criterion()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, args.steps + 1):
        out = model(images)
        terms = criterion(out, labels)
        optimizer.zero_grad()
        terms['loss'].backward()
        optimizer.step()
        if step == 1:
            print(f'logits {tuple(out.logits.shape)} (padded to {out.padded_size})')
            for name, logits in out.aux.items():
                print(f'  adapter {name:<12} logits {tuple(logits.shape)}')
        print(f'step {step}: ' + '  '.join(f'{k} {v.item():.4f}' for k, v in terms.items()))
    model.deploy().eval()
    print(f'\ndeployed: {_count(model) / 1e6:.2f} M parameters ({with_heads - _count(model)} head-set '
          'parameters removed; the baseline architecture remains)')
    with torch.no_grad():
        prediction = model(images[:1]).argmax(1)
    print(f'prediction {tuple(prediction.shape)}, classes present: '
          f'{[dataset.classes[c] for c in prediction.unique().tolist()]}')
    return 0


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _data_check(args: argparse.Namespace) -> int:
    from zoo.data import check_dataset
    report = check_dataset(args.data, args.root, splits=args.split)
    print(report.format())
    return 0 if report.ok else 1


def _publish(args: argparse.Namespace) -> int:
    from zoo.hub import publish
    repo_id, files = publish(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    verb = 'would upload' if args.dry_run else 'uploaded'
    print(f'{args.folder}: checked; {verb} {files} to {repo_id}' + (' (private)' if args.private else ''))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='zoo', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    listing = commands.add_parser('list', help='registered models (or published weights)')
    listing.add_argument('filter', nargs='?', help="fnmatch pattern, e.g. '*former*'")
    listing.add_argument('--pretrained', action='store_true', help='list published weights (arch.tag)')
    listing.add_argument('--aliases', action='store_true', help='include short aliases')
    listing.set_defaults(run=_list)

    demo = commands.add_parser('demo', help='train a few steps on the embedded sample and print every term')
    demo.add_argument('--model', default='deeplabv3plus_imachsr')
    demo.add_argument('--images', type=int, default=2, help='sample frames in the batch')
    demo.add_argument('--steps', type=int, default=3)
    demo.set_defaults(run=_demo)

    publish = commands.add_parser('publish', help='check a weight folder and upload it to the Hugging Face Hub')
    publish.add_argument('folder', help='a folder written by save_pretrained')
    publish.add_argument('--repo-id', help='org/name (default: $ZOO_HF_ORG/<folder name>)')
    publish.add_argument('--private', action='store_true')
    publish.add_argument('--dry-run', action='store_true', help='check and list the files, upload nothing')
    publish.set_defaults(run=_publish)

    data = commands.add_parser('data', help='dataset tools').add_subparsers(dest='data_command', required=True)
    check = data.add_parser('check', help='check every file of a dataset and summarise it')
    check.add_argument('--data', required=True, help='camvid, cityscapes, synthia or folder')
    check.add_argument('--root', required=True)
    check.add_argument('--split', action='append', help='split to check (repeatable; default: all present)')
    check.set_defaults(run=_data_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f'zoo {args.command}: error: {error}', file=sys.stderr)
        return 2
