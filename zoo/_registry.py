"""Model registry in timm's style: ``@register_model`` entrypoints, aliases and weight tags."""
import difflib
import fnmatch
import sys
from typing import Callable, Iterable, Union

from ._pretrained import PretrainedCfg

_model_entrypoints: dict[str, Callable] = {}
_model_aliases: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict[str, PretrainedCfg]] = {}  # architecture -> tag -> cfg


def register_model(fn: Callable) -> Callable:
    """Register an entrypoint under its function name.

    Weights come from the defining module's ``default_cfgs`` (a list of ``PretrainedCfg``),
    which must therefore stand above the entrypoints, as in timm.
    """
    name = fn.__name__
    if name in _model_entrypoints or name in _model_aliases:
        raise RuntimeError(f'model {name!r} is registered twice')
    _model_entrypoints[name] = fn
    for cfg in getattr(sys.modules[fn.__module__], 'default_cfgs', ()):
        if cfg.architecture == name:
            _pretrained_cfgs.setdefault(name, {})[cfg.tag] = cfg
    return fn


def register_model_alias(alias: str, name: str) -> None:
    """Make ``alias`` create ``name`` (e.g. ``topformer_imachsr`` -> ``topformer_base_imachsr``)."""
    if name not in _model_entrypoints:
        raise RuntimeError(f'alias {alias!r} points at unregistered model {name!r}')
    if alias in _model_entrypoints or alias in _model_aliases:
        raise RuntimeError(f'model {alias!r} is registered twice')
    _model_aliases[alias] = name


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``'arch.tag'`` -> ``('arch', 'tag')``; no tag gives ``''``."""
    arch, _, tag = name.partition('.')
    return arch, tag


def _resolve(name: str) -> str:
    arch = split_model_name_tag(name)[0]
    return _model_aliases.get(arch, arch)


def is_model(name: str) -> bool:
    """True for a registered architecture or alias (a ``.tag`` suffix is ignored)."""
    return _resolve(name) in _model_entrypoints


def _unknown(kind: str, name: str, known: Iterable[str]) -> RuntimeError:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ' See zoo.list_models().'
    return RuntimeError(f'Unknown {kind} {name!r}.{hint}')


def model_entrypoint(name: str) -> Callable:
    """The entrypoint function of ``name`` (an alias resolves to its target)."""
    arch = _resolve(name)
    if arch not in _model_entrypoints:
        raise _unknown('model', split_model_name_tag(name)[0], [*_model_entrypoints, *_model_aliases])
    return _model_entrypoints[arch]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The weight ``arch.tag``; without a tag, the architecture's first (default) weight."""
    arch, tag = split_model_name_tag(name)
    arch = _resolve(arch)
    model_entrypoint(arch)
    cfgs = _pretrained_cfgs.get(arch, {})
    if not cfgs:
        raise RuntimeError(f'No pretrained weights are registered for {arch!r}. '
                           f'Weights that exist: {list_pretrained() or "none yet"}.')
    if tag and tag not in cfgs:
        raise _unknown('weight', f'{arch}.{tag}', [c.name for c in cfgs.values()])
    return cfgs[tag] if tag else next(iter(cfgs.values()))


def _matches(name: str, include: Union[str, Iterable[str]], exclude: Iterable[str]) -> bool:
    include = [p for p in ([include] if isinstance(include, str) else include) if p]
    if include and not any(fnmatch.fnmatch(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def list_models(filter: Union[str, Iterable[str]] = '', pretrained: bool = False,
                exclude_filters: Iterable[str] = (), include_aliases: bool = False) -> list[str]:
    """Registered names matching fnmatch ``filter``; ``pretrained=True`` lists ``arch.tag`` weights."""
    if pretrained:
        names = [cfg.name for cfgs in _pretrained_cfgs.values() for cfg in cfgs.values()]
    else:
        names = [*_model_entrypoints, *(_model_aliases if include_aliases else ())]
    return sorted(n for n in names if _matches(n, filter, exclude_filters))


def list_pretrained(filter: Union[str, Iterable[str]] = '', exclude_filters: Iterable[str] = ()) -> list[str]:
    """Published weights as ``arch.tag`` names, e.g. ``list_pretrained('*.camvid')``."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters)
