"""Loads ``configs/FILE.py[:ARG]`` and applies ``--config.key=value`` overrides.

The same semantics as ``ml_collections.config_flags``: the file's
``get_config(arg)`` builds a locked ConfigDict, and each override is parsed
with the type of the field it replaces, so a mistyped key or a value of the
wrong type is an error that names it. Shared by ``train.py`` and the sweep
launcher, which must validate every run's config before starting any.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import os
import sys
from types import ModuleType
from typing import Any

import ml_collections

from training.exits import EXIT_BAD_INPUT


def split_config_arg(path_with_arg: str) -> tuple[str, str | None]:
    """'configs/x.py:resnet-56' -> ('configs/x.py', 'resnet-56')."""
    path, sep, arg = path_with_arg.partition(":")
    return path, (arg if sep else None)


def load_module(path: str) -> ModuleType:
    """Imports a config file by path (the repo root is importable, for ``from configs ...``)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg) function")
    return module


def call_with_arg(fn, arg: str | None, *args) -> Any:
    """Calls ``fn(*args)`` or ``fn(*args, arg)``, leaving the file's default when no arg."""
    params = inspect.signature(fn).parameters
    if arg is None:
        return fn(*args)
    if len(params) <= len(args):
        raise ValueError(f"{fn.__name__} takes no argument, but ':{arg}' was given")
    return fn(*args, arg)


def parse_value(text: str, current: Any, kind: type | None) -> Any:
    """Parses a command-line value with the type of the field it overrides."""
    if text in ("None", "none", "null") and (current is None or kind is not None):
        return None
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    if kind in (tuple, list):
        value = ast.literal_eval(text)
        if isinstance(value, int | float | str):
            value = (value,)
        return kind(value)
    return ast.literal_eval(text)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Sets dotted keys from strings, typed like the existing fields; unknown keys are errors."""
    for key, text in overrides.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(f"unknown config key {key!r}")
            node = node[part]
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"unknown config key {key!r}")
        ref = node.get_ref(leaf)
        try:
            value = parse_value(text, ref.get(), ref.get_type())
            with node.ignore_type() if value is None else contextlib.nullcontext():
                node[leaf] = value
        except (ValueError, TypeError, SyntaxError) as e:
            raise ValueError(f"bad value {text!r} for config key {key!r}: {e}") from e


def load_config(path_with_arg: str, overrides: dict[str, str] | None = None):
    """``configs/x.py:ARG`` + overrides -> the final, locked ConfigDict."""
    path, arg = split_config_arg(path_with_arg)
    module = load_module(path)
    try:
        config = call_with_arg(module.get_config, arg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"get_config({arg!r}) in {path} failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"get_config in {path} must return an ml_collections.ConfigDict")
    apply_overrides(config, overrides or {})
    config.lock()
    return config


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """['--config.a.b=1', '--config.c', '2'] -> {'a.b': '1', 'c': '2'}."""
    out, i = {}, 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--config."):
            raise ValueError(f"unrecognised argument {item!r}; overrides look like "
                             "--config.key=value")
        key, sep, value = item[len("--config."):].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise ValueError(f"{item} needs a value")
            value, i = extra[i + 1], i + 1
        if not key:
            raise ValueError(f"empty config key in {item!r}")
        out[key] = value
        i += 1
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a ``ValueError`` (one ``error:`` line), not usage and exit."""

    def error(self, message: str):
        raise ValueError(message)


def bad_input(error: Exception) -> int:
    """Prints the one ``error:`` line of bad input and returns its exit code."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """train.py's command line: --config FILE[:ARG] --workdir DIR [--config.key=value ...]."""
    p = ArgumentParser(prog="train.py", description="Train one network from a config file.")
    p.add_argument("--config", required=True, help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run even if its saved config differs")
    multi = p.add_argument_group("one process of several (see distributed.py)")
    multi.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    multi.add_argument("--heartbeat-timeout", type=int, default=100,
                       help="seconds after which a silent process ends the job")
    args, extra = p.parse_known_args(argv)
    args.overrides = parse_overrides(extra)
    return args
