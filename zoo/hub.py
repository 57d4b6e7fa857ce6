"""Weights in Hugging Face Hub format: save, find, check, load and publish.

A weight folder holds ``config.json`` (everything needed to rebuild the model, its labels,
normalisation, metrics and the sha256 of the weights), ``model.safetensors`` and ``README.md``
(the Hub model card). ``pretrained=True`` finds ``<arch>.<tag>/`` in ``$ZOO_WEIGHTS_DIR`` or
the repository's ``weights/``, else downloads it with ``huggingface_hub``.
"""
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, EvalResult, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._pretrained import PretrainedCfg

_logger = logging.getLogger(__name__)

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
CARD_NAME = 'README.md'
REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'
# Fields of a config.json that describe the weight rather than build the model.
_CARD_FIELDS = ('label_names', 'palette', 'mean', 'std', 'input_size', 'ignore_index', 'dataset', 'split',
                'license', 'metrics', 'recipe', 'tag', 'notes')
METRIC_NAMES = {'mIoU': 'mean_iou', 'mF1': 'mean_f1', 'mPrecision': 'mean_precision', 'mRecall': 'mean_recall',
                'aAcc': 'accuracy'}


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp)`` into a temporary file beside ``path``, then rename it into place:
    a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading state dicts into models


@dataclass
class LoadReport:
    """What a lenient load left out, on purpose: every list is also logged."""
    dropped_heads: list[str] = field(default_factory=list)       # in the file, the model has no head set
    initialised_heads: list[str] = field(default_factory=list)   # the model's head set, absent from the file
    skipped_classifiers: list[str] = field(default_factory=list)  # other num_classes: left initialised


def read_state_dict(path: Union[str, Path]) -> dict[str, Tensor]:
    """A ``.safetensors`` file or a torch checkpoint (the first of ``state_dict_ema``,
    ``state_dict``, ``model`` inside one is taken, a DDP ``module.`` prefix dropped); never
    unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        state = load_file(str(path)) if path.suffix == '.safetensors' else torch.load(
            path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise RuntimeError(f'checkpoint {path} could not be read ({error}); is it truncated or corrupt?') from error
    for key in ('state_dict_ema', 'state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise RuntimeError(f'checkpoint {path} holds a {type(state).__name__}, not a state_dict')
    return {k.removeprefix('module.'): v for k, v in state.items()}


def class_dependent_keys(model: nn.Module) -> set[str]:
    """State-dict keys whose shape follows ``num_classes``: the decoder's and adapters' classifiers."""
    classifiers = [model.decoder.classifier]
    if getattr(model, 'heads', None) is not None:
        classifiers += [adapter.classifier for adapter in model.heads.adapters.values()]
    return {f'{name}.{key}' for name, module in model.named_modules() if any(module is c for c in classifiers)
            for key in module.state_dict()}


def load_weights(model: nn.Module, state: dict[str, Tensor], strict: bool = False,
                 source: str = 'state_dict') -> LoadReport:
    """Load ``state`` into ``model``.

    ``strict=True`` demands an exact match. Otherwise three differences are allowed, and
    reported: head-set tensors the model lacks (an ``_imachsr`` weight into its baseline or a
    deployed model), a head set the file lacks, and classifiers of another ``num_classes``
    (fine-tuning). Anything else means another architecture and is an error.
    """
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if strict:
        wrong = unexpected + missing + mismatched
    else:
        classes = class_dependent_keys(model)
        wrong = ([k for k in unexpected + missing if not k.startswith('heads.')]
                 + [k for k in mismatched if k not in classes])
    if wrong:
        details = '; '.join(f'{what}: {keys[:6]}{" ..." if len(keys) > 6 else ""}' for what, keys in (
            ('missing', [k for k in missing if k in wrong]), ('unexpected', [k for k in unexpected if k in wrong]),
            ('shape mismatch', [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in mismatched
                                if k in wrong])) if keys)
        raise RuntimeError(f'{source} does not fit {getattr(model, "architecture", type(model).__name__)} '
                           f'({"strict" if strict else "lenient"} load): {details}')
    report = LoadReport(dropped_heads=unexpected, initialised_heads=missing, skipped_classifiers=mismatched)
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in mismatched}, strict=False)
    for what, keys in (('dropped head-set tensors the model has no place for', report.dropped_heads),
                       ('left the head set initialised: not in the file', report.initialised_heads),
                       ('skipped classifiers of another num_classes', report.skipped_classifiers)):
        if keys:
            _logger.warning('%s: %s (%d): %s', source, what, len(keys), keys)
    return report


def load_checkpoint(model: nn.Module, path: Union[str, Path], strict: bool = True) -> LoadReport:
    """Load a ``.safetensors`` file or torch checkpoint into ``model`` (see ``load_weights``)."""
    return load_weights(model, read_state_dict(path), strict, source=str(path))


# ---------------------------------------------------------------------------------------------
# Registered weights


def weights_dirs() -> list[Path]:
    """Local folders searched for ``<arch>.<tag>/``: ``$ZOO_WEIGHTS_DIR``, then the repo's ``weights/``."""
    dirs = [Path(os.environ['ZOO_WEIGHTS_DIR'])] if os.environ.get('ZOO_WEIGHTS_DIR') else []
    return dirs + [REPO_WEIGHTS_DIR]


def resolve_weight_file(cfg: PretrainedCfg) -> Path:
    """The checked file of a registered weight: a local weights folder, else the Hub.

    The sha256 recorded in ``cfg`` must match, whichever place the file came from.
    """
    for root in weights_dirs():
        candidate = root / cfg.name / cfg.file
        if candidate.is_file():
            _logger.debug('%s: using local file %s', cfg.name, candidate)
            return _checked(candidate, cfg.sha256, f'{cfg.name} (Hub repo {cfg.hf_hub_id})')
    if not cfg.hf_hub_id:
        raise FileNotFoundError(f'{cfg.name}: no local copy in {[str(d) for d in weights_dirs()]} '
                                'and no Hugging Face Hub repo is recorded for it')
    path = _download(cfg.hf_hub_id, cfg.file, None, hint=weights_dirs()[0] / cfg.name / cfg.file)
    _logger.debug('%s: using Hub file %s', cfg.name, path)
    return _checked(path, cfg.sha256, f'{cfg.name} (Hub repo {cfg.hf_hub_id})')


def _download(repo_id: str, filename: str, revision: Optional[str], hint: Optional[Path] = None) -> Path:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (LocalEntryNotFoundError, OSError) as error:
        place = f'place it at {hint} or ' if hint else ''
        raise FileNotFoundError(
            f'{filename} of Hub repo {repo_id} is neither cached nor downloadable ({type(error).__name__}). '
            f'Offline, {place}put it in the Hugging Face cache on a connected machine '
            f'(huggingface-cli download {repo_id} {filename}).') from error


def _checked(path: Path, sha256: Optional[str], what: str) -> Path:
    if sha256 and sha256_of(path) != sha256:
        raise RuntimeError(f'{what}: {path} does not match the recorded sha256 {sha256}: the file is '
                           'truncated, corrupt or another weight; delete it and download it again')
    return path


# ---------------------------------------------------------------------------------------------
# Weight folders


def model_config(model: nn.Module, **fields: Any) -> dict[str, Any]:
    """The ``config.json`` of ``model``: how to rebuild it, and what describes the weight."""
    card = {k: v for k, v in model.pretrained_cfg.items() if k in _CARD_FIELDS}
    card.update({k: v for k, v in fields.items() if v is not None})
    unknown = sorted(set(card) - set(_CARD_FIELDS))
    if unknown:
        raise ValueError(f'unknown weight fields {unknown}; known: {list(_CARD_FIELDS)}')
    return json.loads(json.dumps({
        'architecture': model.architecture,
        'model_args': model.model_args,
        'deployed': model.deployed,
        'num_classes': model.num_classes,
        'supervision': asdict(model.supervision) if model.supervision is not None else None,
        **card,
    }))


def save_pretrained(model: nn.Module, directory: Union[str, Path], dtype: Optional[torch.dtype] = None,
                    **fields: Any) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the model card ``README.md`` to ``directory``.

    ``fields`` describe the weight (``label_names``, ``palette``, ``mean``, ``std``,
    ``input_size``, ``dataset``, ``split``, ``metrics``, ``recipe``, ``tag``, ``license``, and
    ``notes``, a paragraph for the card);
    ``dtype=torch.float16`` halves the file (loading upcasts). Each file is written atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model_config(model, **fields)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    weights = atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), {'format': 'pt'}))
    config['sha256'] = sha256_of(weights)
    config['dtype'] = str(dtype or torch.float32).removeprefix('torch.')
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + '\n'))
    atomic_write(directory / CARD_NAME, lambda tmp: tmp.write_text(model_card(config, directory.name)))
    return directory


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path} does not exist: a weight folder needs {CONFIG_NAME}') from None
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not valid JSON: {error}') from error
    missing = [k for k in ('architecture', 'model_args') if k not in config]
    if missing:
        raise ValueError(f'{path} lacks {missing}: it cannot rebuild a model')
    return config


_REPO_ID = re.compile(r'^[\w.-]+/[\w.-]+$')


def from_pretrained(source: Union[str, Path], revision: Optional[str] = None, strict: bool = False,
                    **overrides: Any) -> nn.Module:
    """Rebuild a model from a weight folder or a Hub repo id (``org/name``), nothing else needed.

    ``overrides`` change model arguments (``num_classes=K`` fine-tunes: the classifiers are
    left initialised and listed); ``strict=True`` demands an exact match.
    """
    folder = Path(source)
    if folder.is_dir():
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f'{weights_path} does not exist: a weight folder needs {WEIGHTS_NAME}')
    elif _REPO_ID.match(str(source)):
        config_path = _download(str(source), CONFIG_NAME, revision)
        weights_path = _download(str(source), WEIGHTS_NAME, revision)
    else:
        raise FileNotFoundError(f'{source} is neither a weight folder nor a Hub repo id (org/name)')
    config = read_config(config_path)
    _checked(weights_path, config.get('sha256'), str(source))
    model = model_from_config(config, **overrides)
    load_weights(model, read_state_dict(weights_path), strict=strict, source=str(weights_path))
    return model


def model_from_config(config: dict[str, Any], **overrides: Any) -> nn.Module:
    """The untrained model a ``model_config`` describes, with its weight's description attached."""
    from ._factory import create_model  # the factory resolves hf-hub: names through this module

    model = create_model(config['architecture'], **{**config['model_args'], **overrides})
    if config.get('deployed'):
        model.deploy()
    model.pretrained_cfg.update({k: config[k] for k in _CARD_FIELDS if k in config})
    return model


# ---------------------------------------------------------------------------------------------
# Model cards and publishing


def _per_point_text(weights: dict[str, float]) -> str:
    values = set(weights.values())
    return str(values.pop()) if len(values) == 1 else str(weights)


def model_card(config: dict[str, Any], name: str) -> str:
    """A Hub model card: YAML metadata with ``model-index``, then usage and the eval command."""
    metrics = config.get('metrics') or {}
    dataset, split = config.get('dataset') or 'unknown', config.get('split') or 'val'
    data = ModelCardData(
        library_name='imachsr-zoo', license=config.get('license', 'apache-2.0'), pipeline_tag='image-segmentation',
        tags=['image-segmentation', 'deep-supervision', 'imachsr', 'pytorch'],
        datasets=[dataset] if config.get('dataset') else None, model_name=name,
        eval_results=[EvalResult(task_type='image-segmentation', dataset_type=dataset, dataset_name=dataset,
                                 dataset_split=split, metric_type=METRIC_NAMES.get(key, key), metric_name=key,
                                 metric_value=float(value))
                      for key, value in metrics.items() if key in METRIC_NAMES] or None)
    supervision = config.get('supervision')
    heads = (f"{supervision['kind']} at points {supervision['points']}, alpha {_per_point_text(supervision['alpha'])}"
             + (f", beta {_per_point_text(supervision['beta'])}" if supervision['kind'] == 'imachsr' else '')
             if supervision else 'none (deployed or baseline)')
    notes = f"\n{config['notes']}\n" if config.get('notes') else ''
    table = '\n'.join(f'| {key} | {float(value):.2f} |' for key, value in metrics.items()
                      if isinstance(value, (int, float)))
    root = f'<path to {dataset}>'
    return f"""---
{data.to_yaml()}
---

# {name}

`{config['architecture']}` with {config['num_classes']} classes, trained on {dataset} ({split} numbers below).
Training head set: {heads}. The heads are removed by `model.deploy()`; inference costs exactly
the baseline's.
{notes}
```python
import zoo
model = zoo.create_model('{name}', pretrained=True).eval()
```

## Results ({dataset} {split})

| metric | value |
|---|---|
{table}

Reproduce with:

```bash
zoo eval --model {name} --data {dataset} --root {root} --split {split}
```

## Training recipe

```json
{json.dumps(config.get('recipe') or {}, indent=2)}
```
"""


def check_weight_folder(folder: Union[str, Path]) -> dict[str, Any]:
    """Everything ``publish`` checks: the config rebuilds the model, the weights load strictly and
    match their sha256, and the model card's metadata parses. Returns the config."""
    folder = Path(folder)
    for required in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
        if not (folder / required).is_file():
            raise FileNotFoundError(f'{folder / required} does not exist')
    config = read_config(folder / CONFIG_NAME)
    if not config.get('sha256'):
        raise ValueError(f'{folder / CONFIG_NAME} records no sha256 of {WEIGHTS_NAME}')
    from_pretrained(folder, strict=True)
    card = ModelCard.load(folder / CARD_NAME)
    if config.get('metrics') and not card.data.to_dict().get('model-index'):
        raise ValueError(f'{folder / CARD_NAME}: metrics are recorded but the card has no model-index')
    return config


def publish(folder: Union[str, Path], repo_id: Optional[str] = None, private: bool = False,
            dry_run: bool = False) -> tuple[str, list[str]]:
    """Check ``folder`` and upload it to the Hub repo ``repo_id`` (default ``$ZOO_HF_ORG/<folder name>``).

    Returns the repo id and the uploaded files; ``dry_run`` checks and uploads nothing.
    """
    folder = Path(folder)
    check_weight_folder(folder)
    if repo_id is None:
        org = os.environ.get('ZOO_HF_ORG')
        if not org:
            raise ValueError('no --repo-id given and ZOO_HF_ORG is not set')
        repo_id = f'{org}/{folder.name}'
    if not _REPO_ID.match(repo_id):
        raise ValueError(f'repo id {repo_id!r} is not of the form org/name')
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
    if dry_run:
        return repo_id, files
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f'Upload {folder.name}')
    except Exception as error:
        raise RuntimeError(f'uploading {folder} to {repo_id} failed: {error}') from error
    return repo_id, files
