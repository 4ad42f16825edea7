"""Find a user's reward function from its `reward.functions[i]` entry: a .py file (`path`) or a module (`module`).

An entry is a flat mapping, `{path: rewards/length.py, name: score, weight: 0.5, max_length: 800}`;
`function_spec` parses it (every key besides path/module/name/weight is a keyword argument for the function).

Files are imported under a unique module name derived from their absolute path, so two files both called
`reward.py` don't overwrite each other in `sys.modules`. Every failure is a `ConfigError` of one line that
names the offending field, because these are user inputs and the first place they fail is a long way from the
config file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlpost.config import ConfigError, RewardFunctionConfig

# rlpost/rewards/loader.py -> the checkout root, so the default `rewards/gsm8k.py` resolves from any cwd.
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
SPEC_KEYS = ("path", "module", "name", "weight")  # an entry's other keys are the function's keyword arguments


def plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra hands us) as plain dicts/lists, so workers and plug-ins get plain data."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def function_spec(entry: Any, index: int) -> RewardFunctionConfig:
    """Parse `reward.functions[index]`: a mapping (or an already parsed RewardFunctionConfig)."""
    prefix = f"reward.functions[{index}]"
    if isinstance(entry, RewardFunctionConfig):
        return RewardFunctionConfig(entry.path, entry.module, entry.name, float(entry.weight),
                                    dict(plain(entry.kwargs) or {}))
    entry = plain(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"{prefix}: expected a mapping like {{path: rewards/gsm8k.py, name: score}}, "
                          f"got {type(entry).__name__} {str(entry)[:60]!r}")
    for key in ("path", "module", "name"):
        if not isinstance(entry.get(key, ""), str):
            raise ConfigError(f"{prefix}.{key}: expected a string, got {entry[key]!r}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ConfigError(f"{prefix}.weight: expected a number, got {weight!r}")
    return RewardFunctionConfig(path=entry.get("path", ""), module=entry.get("module", ""),
                                name=entry.get("name", "score"), weight=float(weight),
                                kwargs={k: v for k, v in entry.items() if k not in SPEC_KEYS})


def function_specs(entries: list[Any]) -> list[RewardFunctionConfig]:
    return [function_spec(entry, i) for i, entry in enumerate(entries)]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_path(path: str, field: str) -> Path:
    """An existing file: absolute as given, else relative to the cwd, else relative to the rlpost checkout."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, CHECKOUT_ROOT / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{field}: file '{path}' not found (looked at {where}); "
                      "give an absolute path or one relative to the working directory")


def _import_file(path: Path, field: str):
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    module_name = f"rlpost_reward_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{field}: '{path}' is not a Python file; point it at a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and pickling look their module up in sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ConfigError(f"{field}: importing '{path}' failed: {_one_line(e)}; fix the file") from e
    return module


def load_reward_fn(spec: RewardFunctionConfig, index: int) -> Callable:
    """Import `spec.path` or `spec.module` and return its `spec.name` function; ConfigError on any problem."""
    spec = function_spec(spec, index)
    prefix = f"reward.functions[{index}]"
    if spec.path and spec.module:
        raise ConfigError(f"{prefix}: both path ('{spec.path}') and module ('{spec.module}') are set; "
                          "set exactly one of them")
    if spec.path:
        field = f"{prefix}.path"
        where = resolve_path(spec.path, field)
        module = _import_file(where, field)
    elif spec.module:
        field = f"{prefix}.module"
        where = spec.module
        try:
            module = importlib.import_module(spec.module)
        except Exception as e:
            raise ConfigError(f"{field}: cannot import '{spec.module}': {_one_line(e)}; "
                              "check the name and that it is on PYTHONPATH") from e
    else:
        raise ConfigError(f"{prefix}: neither path nor module is set; set path (a .py file) "
                          "or module (an importable module name)")

    fn = getattr(module, spec.name, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        defines = ", ".join(defined) or "nothing callable"
        raise ConfigError(f"{prefix}.name: no '{spec.name}' in {where} (it defines: {defines}); "
                          "set name to the reward function")
    if not callable(fn):
        raise ConfigError(f"{prefix}.name: '{spec.name}' in {where} is a {type(fn).__name__}, not a function; "
                          "set name to the reward function")
    _check_kwargs(fn, spec, prefix)
    return fn


def _check_kwargs(fn: Callable, spec: RewardFunctionConfig, prefix: str) -> None:
    """Every keyword argument of the entry must be a parameter of the function, or reach a `**kwargs` it reads:
    a misspelt key (`wieght: 0.5`) swallowed by `**_` would otherwise be ignored without a word."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to check against (some C callables)
        return
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    reads_extra = any(p.kind == p.VAR_KEYWORD and not n.startswith("_") for n, p in params.items())
    for key in spec.kwargs:
        if key not in named and not reads_extra:
            raise ConfigError(f"{prefix}.{key}: {spec.name}() has no parameter '{key}' (it takes "
                              f"{', '.join(named) or 'none by name'}); fix the key, or add the parameter; an "
                              "entry's keys besides path/module/name/weight are passed to the function")


def unique_labels(names: list[str]) -> list[str]:
    """`names` with repeats numbered: gsm8k, gsm8k_2, gsm8k_3, ... (metric keys must not collide)."""
    labels: list[str] = []
    for name in names:
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}_{n}"
        labels.append(label)
    return labels


def reward_label(spec: RewardFunctionConfig) -> str:
    """A short name for logging: the file stem or the module's last component (`unique_labels` de-duplicates)."""
    if spec.path:
        return Path(spec.path).stem
    if spec.module:
        return spec.module.rsplit(".", 1)[-1]
    return spec.name
