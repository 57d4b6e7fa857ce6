"""``zoo`` command line (also ``python -m zoo``)."""
import argparse
import sys
from typing import Optional, Sequence

import torch

from .engine.config import add_config_arguments


def _list(args: argparse.Namespace) -> int:
    import zoo
    names = zoo.list_models(args.filter or '', pretrained=args.pretrained, include_aliases=args.aliases)
    print('\n'.join(names) if names else f'no model matches {args.filter!r}')
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Score the published baseline and iMacHSR models on the embedded CamVid sample (whole
    360x480 frames) and write one figure: image | ground truth | baseline | iMacHSR, a row a frame."""
    import numpy as np

    from zoo.data import SAMPLE_ROOT, build_transforms, create_dataset
    from zoo.engine import InferenceCfg, evaluate
    from zoo.engine.checkpoint import load_model
    from zoo.engine.evaluate import collate_list
    from zoo.engine.visualize import colorize, denormalize, panel, write_rgb
    from zoo.metrics import format_table

    imachsr = load_model(args.model).eval()  # the model first: a wrong --model is named before anything else
    models = {args.baseline: load_model(args.baseline).eval(), args.model: imachsr}
    mean, std = imachsr.pretrained_cfg['mean'], imachsr.pretrained_cfg['std']
    dataset = create_dataset('camvid', SAMPLE_ROOT, 'val', transform=build_transforms(False, mean=mean, std=std))
    print(dataset.describe())
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_list)
    rows = []

    def keep_rows(images, labels, predictions):
        if len(rows) < args.frames:
            columns = {'image': denormalize(images[0], mean, std),
                       'ground truth': colorize(labels[0].numpy(), dataset.palette, dataset.ignore_index)}
            columns.update({name: colorize(pred[0].numpy(), dataset.palette) for name, pred in predictions.items()})
            rows.append(panel(columns))

    with torch.no_grad():
        matrices = evaluate(models, loader, dataset.num_classes, dataset.ignore_index, InferenceCfg(),
                            on_batch=keep_rows)
    for name, model in models.items():
        print(f'\n{name} ({model.architecture}, {_count(model) / 1e6:.2f} M parameters), '
              f'{len(dataset)} sample frames:')
        print(format_table(matrices[name]['output'].compute(list(dataset.classes))))
    spacer = np.full((6, rows[0].shape[1], 3), 255, dtype=np.uint8)
    figure = write_rgb(args.out, np.concatenate([part for row in rows for part in (row, spacer)][:-1], 0))
    print(f'\npanel ({len(rows)} frames: image | ground truth | {" | ".join(models)}): {figure}')
    return 0


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _data_check(args: argparse.Namespace) -> int:
    from zoo.data import check_dataset
    extra = {'classes': args.classes.split(',')} if args.classes else {}
    report = check_dataset(args.data, args.root, splits=args.split, **extra)
    print(report.format())
    return 0 if report.ok else 1


def _publish(args: argparse.Namespace) -> int:
    from zoo.hub import publish
    repo_id, files = publish(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    verb = 'would upload' if args.dry_run else 'uploaded'
    print(f'{args.folder}: checked; {verb} {files} to {repo_id}' + (' (private)' if args.private else ''))
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging
    import os

    from zoo.engine import train
    from zoo.engine.config import config_from_args

    main_process = int(os.environ.get('RANK', 0)) == 0  # torchrun: the others only warn
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s', datefmt='%H:%M:%S')
    result = train(config_from_args(args), resume=args.resume)
    if main_process:
        val = '' if result.val is None else (f'; last val mIoU {result.val["mIoU"]:.2f}, '
                                             f'best {result.best["mIoU"]:.2f} at step {result.best["step"]}')
        print(f'{result.run_dir}: {result.step} steps{val}')
    return 0


def _device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: torch sees no CUDA device')
    return torch.device(name)


def _inference_models(args: argparse.Namespace):
    """The models named by ``--model``/``--checkpoint`` (in order, labelled), the inference
    settings, and the normalisation they share."""
    from zoo.data import IMAGENET_MEAN, IMAGENET_STD
    from zoo.engine import InferenceCfg
    from zoo.engine.checkpoint import load_model

    if not args.sources:
        raise ValueError('give --model NAME[.tag] or --checkpoint PATH')
    device = _device(args.device)
    models = {}
    for kind, value in args.sources:
        model = load_model(**{kind: value}).to(device).eval()
        label = value if kind == 'name' else model.architecture
        models[label if label not in models else f'{label} #{len(models) + 1}'] = model
    norms = {(tuple(m.pretrained_cfg.get('mean') or IMAGENET_MEAN), tuple(m.pretrained_cfg.get('std') or IMAGENET_STD))
             for m in models.values()}
    if len(norms) > 1:
        raise ValueError(f'the models normalise their input differently ({sorted(norms)}): give them one at a time')
    inference = InferenceCfg(mode=args.mode, crop_size=args.crop_size and tuple(args.crop_size),
                             stride=args.stride and tuple(args.stride), flip=args.flip, scales=tuple(args.scales))
    return models, inference, device, *norms.pop()


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm
    from zoo.data import build_transforms, create_dataset
    from zoo.engine.evaluate import HEAD_NOTE, collate_list, evaluate, json_ready, metrics_report
    from zoo.engine.visualize import colorize, denormalize, panel, plot_confusion, write_rgb
    from zoo.metrics import format_table

    # the same kernels on every run, so that a model card's numbers reproduce exactly
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    models, inference, device, mean, std = _inference_models(args)
    first = next(iter(models.values()))
    kwargs = {'classes': first.pretrained_cfg.get('label_names')} if args.data == 'folder' else {}
    dataset = create_dataset(args.data, args.root, args.split, transform=build_transforms(False, mean=mean, std=std),
                             **kwargs)
    for label, model in models.items():
        if model.num_classes != dataset.num_classes:
            raise ValueError(f'{label} predicts {model.num_classes} classes; {args.data} has {dataset.num_classes}')
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_list)
    shown = 0

    def save_panels(images, labels, predictions):
        nonlocal shown
        for i, (image, label) in enumerate(zip(images, labels)):
            if args.vis_limit is not None and shown >= args.vis_limit:
                return
            columns = {'image': denormalize(image, mean, std),
                       'ground truth': colorize(label.numpy(), dataset.palette, dataset.ignore_index)}
            columns.update({name: colorize(pred[i].numpy(), dataset.palette) for name, pred in predictions.items()})
            write_rgb(Path(args.save_vis) / f'{shown:04d}.png', panel(columns))
            shown += 1

    matrices = evaluate(models, loader, dataset.num_classes, dataset.ignore_index, inference, device,
                        per_head=args.per_head, on_batch=save_panels if args.save_vis else None,
                        progress=lambda batches: tqdm(batches, desc=f'{args.data} {args.split}', leave=False))
    report = {'dataset': args.data, 'root': str(args.root), 'split': args.split, 'images': len(dataset),
              'inference': vars(inference), 'models': {}}
    for (kind, source), (label, model) in zip(args.sources, models.items()):
        result = metrics_report(matrices[label], list(dataset.classes))
        report['models'][label] = {kind: source, **result}
        tta = ', flip' if inference.flip else ''
        tta += f', scales {list(inference.scales)}' if len(inference.scales) > 1 else ''
        print(f'\n{label} on {args.data} {args.split} ({len(dataset)} images, {inference.mode}{tta})')
        print(format_table(result))
        for point, head in result.get('heads', {}).items():
            print(f'  head {point} (classes mapped by majority): aAcc {head["aAcc"]:.2f} mIoU {head["mIoU"]:.2f} '
                  f'mF1 {head["mF1"]:.2f}')
        if args.confusion:
            target = Path(args.confusion)
            if len(models) > 1:
                target = target.with_name(f'{target.stem}-{len(report["models"])}{target.suffix}')
            plot_confusion(matrices[label]['output'].matrix.cpu().numpy(), dataset.classes, target,
                           f'{label}, {args.data} {args.split}')
            print(f'confusion matrix: {target}')
    if any('heads' in result for result in report['models'].values()):
        print(f'\nnote: {HEAD_NOTE}')
    report_path = Path(args.report or f'eval_{args.data}_{args.split}.json')
    report_path.write_text(json.dumps(json_ready(report), indent=2) + '\n')
    print(f'report: {report_path}' + (f'; panels: {args.save_vis}' if args.save_vis else ''))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zoo.data import build_transforms, dataset_class
    from zoo.data import IMAGE_SUFFIXES, read_image
    from zoo.data.folder import default_palette
    from zoo.engine import predict_probs
    from zoo.engine.visualize import colorize, overlay, write_rgb

    models, inference, device, mean, std = _inference_models(args)
    if len(models) != 1:
        raise ValueError('predict takes one model')
    model = next(iter(models.values()))
    source = Path(args.input)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f'{source} is neither an image nor a folder')
    if not files:
        raise FileNotFoundError(f'{source} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    palette = (dataset_class(args.data).palette if args.data else None) or model.pretrained_cfg.get('palette') \
        or default_palette(model.num_classes)
    if len(palette) < model.num_classes:
        raise ValueError(f'the palette has {len(palette)} colours for {model.num_classes} classes')
    transform = build_transforms(False, mean=mean, std=std)
    out = Path(args.out)
    for path in files:
        image = read_image(path)
        x = transform(image=image)['image'][None].to(device)
        pred = predict_probs(model, x, inference)['output'].argmax(1)[0].cpu().numpy()
        colours = colorize(pred, palette)
        write_rgb(out / f'{path.stem}_mask.png', colours)
        write_rgb(out / f'{path.stem}_overlay.png', overlay(image, colours, args.opacity))
    print(f'{len(files)} image(s): masks and overlays in {out}')
    return 0


def _plot(args: argparse.Namespace) -> int:
    from zoo.engine.visualize import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group('model (repeat to compare several)')
    models.add_argument('--model', dest='sources', action='append', type=lambda s: ('name', s), default=[],
                        metavar='NAME[.TAG]', help='published weight: arch.tag, hf-hub:org/repo or local-dir:PATH')
    models.add_argument('--checkpoint', dest='sources', action='append', type=lambda s: ('checkpoint', s),
                        metavar='PATH', help='a checkpoint of zoo train, or a weight folder')
    inference = parser.add_argument_group('inference')
    inference.add_argument('--mode', choices=('whole', 'slide'), default='whole',
                           help='whole image, or sliding windows of --crop-size (images larger than the crop)')
    inference.add_argument('--crop-size', type=int, nargs=2, metavar=('H', 'W'), help='sliding window size')
    inference.add_argument('--stride', type=int, nargs=2, metavar=('H', 'W'), help='window stride (2/3 of the crop)')
    inference.add_argument('--flip', action='store_true', help='add mirrored inputs (test-time augmentation)')
    inference.add_argument('--scales', type=float, nargs='+', default=[1.0], help='multi-scale inference factors')
    inference.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='zoo', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    listing = commands.add_parser('list', help='registered models (or published weights)')
    listing.add_argument('filter', nargs='?', help="fnmatch pattern, e.g. '*former*'")
    listing.add_argument('--pretrained', action='store_true', help='list published weights (arch.tag)')
    listing.add_argument('--aliases', action='store_true', help='include short aliases')
    listing.set_defaults(run=_list)

    demo = commands.add_parser('demo', help='score published weights on the embedded CamVid sample; a panel PNG')
    demo.add_argument('--model', default='topformer_imachsr', help='iMacHSR weight (arch[.tag] or alias)')
    demo.add_argument('--baseline', default='topformer_base.camvid', help='the weight to compare it with')
    demo.add_argument('--frames', type=int, default=4, help='sample frames in the panel')
    demo.add_argument('--out', default='demo_panel.png', help='panel PNG')
    demo.set_defaults(run=_demo)

    publish = commands.add_parser('publish', help='check a weight folder and upload it to the Hugging Face Hub')
    publish.add_argument('folder', help='a folder written by save_pretrained')
    publish.add_argument('--repo-id', help='org/name (default: $ZOO_HF_ORG/<folder name>)')
    publish.add_argument('--private', action='store_true')
    publish.add_argument('--dry-run', action='store_true', help='check and list the files, upload nothing')
    publish.set_defaults(run=_publish)

    train = commands.add_parser('train', help='train a model (under torchrun: DistributedDataParallel)',
                                description='Train with a YAML recipe and/or options; options override the recipe.')
    train.add_argument('--config', help='YAML recipe (configs/*.yaml); keys are the options below')
    train.add_argument('--resume', nargs='?', const=True, default=None, metavar='CHECKPOINT',
                       help="continue the run: the newest checkpoint of --run-dir, or CHECKPOINT")
    add_config_arguments(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser('eval', help='score models on a split: aAcc, mIoU, mF1, mPrecision, mRecall')
    _add_inference_args(evaluate)
    evaluate.add_argument('--data', required=True, help='camvid, cityscapes, synthia or folder')
    evaluate.add_argument('--root', required=True, help='dataset root folder')
    evaluate.add_argument('--split', default='val')
    evaluate.add_argument('--batch-size', type=int, default=1)
    evaluate.add_argument('--workers', type=int, default=2)
    evaluate.add_argument('--per-head', action='store_true',
                          help='also score each adapter of an _imachsr model as an early exit')
    evaluate.add_argument('--save-vis', metavar='DIR', help='write panels: image | ground truth | each model')
    evaluate.add_argument('--vis-limit', type=int, metavar='N', help='at most N panels')
    evaluate.add_argument('--confusion', metavar='PNG', help='write the normalised confusion matrix (matplotlib)')
    evaluate.add_argument('--report', metavar='JSON', help='report file (default: eval_<data>_<split>.json)')
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser('predict', help='colour masks and overlays for images')
    predict.add_argument('input', help='an image or a folder of images')
    predict.add_argument('--out', required=True, help='output folder')
    _add_inference_args(predict)
    predict.add_argument('--data', help="take the palette of this dataset (default: the weight's)")
    predict.add_argument('--opacity', type=float, default=0.5, help='mask opacity in the overlays')
    predict.set_defaults(run=_predict)

    plot = commands.add_parser('plot', help='draw the training curves of a run folder (matplotlib)')
    plot.add_argument('run_dir', help='a run folder of zoo train')
    plot.add_argument('--out', help='PNG file (default: RUN_DIR/curves.png)')
    plot.set_defaults(run=_plot)

    data = commands.add_parser('data', help='dataset tools').add_subparsers(dest='data_command', required=True)
    check = data.add_parser('check', help='check every file of a dataset and summarise it')
    check.add_argument('--data', required=True, help='camvid, cityscapes, synthia or folder')
    check.add_argument('--root', required=True)
    check.add_argument('--split', action='append', help='split to check (repeatable; default: all present)')
    check.add_argument('--classes', help='comma-separated class names (required by --data folder)')
    check.set_defaults(run=_data_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f'zoo {args.command}: error: {error}', file=sys.stderr)
        return 2
