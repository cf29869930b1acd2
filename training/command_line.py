"""The command line of ``train.py`` and the launchers: config files and their overrides.

``load_config("configs/FILE.py:ARG", {"model.depth": "56"})`` is
``ml_collections.config_flags``: ``DEFINE_config_file`` on a fresh absl
``FlagValues`` loads the file, calls its ``get_config(ARG)``, locks the result
and defines one flag per override key, typed like the field it replaces, so a
mistyped key or a value of the wrong type is an error. On top of it:
``none``/``None``/``null`` set any field to None (placeholders included),
booleans take true/false, yes/no or 1/0 in any case and nothing else (as in
the config argument: ``configs.network_arg.parse_bool``; absl alone also takes
t/f), and every failure is a one-line ``ValueError`` that names the file, key
or value. The sweep launcher loads every run's config through here to
validate a study before starting any run.

Config files do ``from configs import ...``: the repository root must be
importable, as it is whenever ``training`` is (``python train.py`` and
``python -m ...`` from the root, or ``python /abs/path/train.py``).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_flags
from ml_collections.config_flags import config_path, tuple_parser

from configs.network_arg import parse_bool
from training.exits import EXIT_BAD_INPUT

NONE_WORDS = ("None", "none", "null")  # an override with one of these sets the field to None
# config_flags imports the file as this module (flag name + "_config"), reusing the module
# object of the previous file if one is left in sys.modules.
_CONFIG_MODULE = "config_config"
# Messages under which config_flags re-raises an error of the config file.
_WRAPPED = ("Error whilst parsing config file",
            "Configuration is not available because of an earlier failure")


def split_config_arg(path_with_arg: str) -> tuple[str, str | None]:
    """'configs/x.py:resnet-56' -> ('configs/x.py', 'resnet-56'); no ':' -> (path, None)."""
    path, sep, arg = path_with_arg.partition(":")
    return path, (arg if sep else None)


def load_module(path: str) -> ModuleType:
    """Imports a config file by path (for its optional ``sweep(add, arg)`` function)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"config file {path} failed to load: {_describe(e)}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg) function")
    return module


def call_with_arg(fn: Callable[..., Any], arg: str | None, *args: Any) -> Any:
    """Calls ``fn(*args)`` or ``fn(*args, arg)``, leaving the file's default when no arg."""
    params = inspect.signature(fn).parameters
    if arg is None:
        return fn(*args)
    if len(params) <= len(args):
        raise ValueError(f"{fn.__name__} takes no argument, but ':{arg}' was given")
    return fn(*args, arg)


def load_config(path_with_arg: str, overrides: dict[str, str] | None = None) -> ConfigDict:
    """``configs/x.py:ARG`` + ``{'model.depth': '56', ...}`` -> the final, locked ConfigDict.

    Keys are dotted, without the ``config.`` prefix; values are command-line strings.
    Raises a one-line ValueError for a missing or broken file, an unknown key or a bad value.
    """
    overrides = dict(overrides or {})
    fv = _load(path_with_arg, overrides)
    config = fv["config"].value
    for key, text in overrides.items():
        if text in NONE_WORDS:  # its flag is defined all the same: the key exists
            config_path.set_value(key, config, None)
            continue
        try:
            _parse_override(fv[f"config.{key}"], text)
        except (flags.Error, ValueError, TypeError) as e:
            raise ValueError(f"bad value {text!r} for config key {key!r}: "
                             f"{_describe(e, with_type=False)}") from None
    return config


def _parse_override(flag: flags.Flag, text: str) -> None:
    """Parses ``text`` with the field's type (config_flags' parser) and sets the field."""
    if isinstance(flag.parser, flags.BooleanParser):
        text = "true" if parse_bool(text) else "false"
    if isinstance(flag.parser, tuple_parser.TupleParser):
        try:  # TupleParser would make a bare word (a typo for a number) the tuple ('word',)
            ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError("expected a tuple such as (1, 2) or a single value") from None
    flag.parse(text)


def _parse_config_flag(path_with_arg: str, keys: Iterable[str]) -> flags.FlagValues:
    """``--config FILE[:ARG]`` through config_flags, with a typed flag defined per key."""
    argv = ["load_config", "--config", path_with_arg]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True,
                                    sys_argv=[*argv, *(f"--config.{key}" for key in keys)])
    sys.modules.pop(_CONFIG_MODULE, None)  # no names left over from another config file
    with warnings.catch_warnings():  # config_flags imports the file with load_module()
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        fv(argv)
    return fv


def _load(path_with_arg: str, keys: Iterable[str]) -> flags.FlagValues:
    """The flags of the file's locked config and of ``keys``; every failure one line.

    config_flags reports a broken file or an unknown key in its own ways (a
    traceback inside the message, a bare KeyError, a stand-in config that
    raises an OSError when used). When it fails, the file alone and then each
    key are tried, to name the one at fault.
    """
    keys = list(keys)
    path, arg = split_config_arg(path_with_arg)
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    error = None
    try:
        fv = _parse_config_flag(path_with_arg, keys)
    except Exception as e:  # noqa: BLE001 - explained below
        error = e
    else:
        if isinstance(fv["config"].value, ConfigDict):
            return fv
        try:  # the stand-in for a file that raised an OSError raises it on use
            getattr(fv["config"].value, "lock", None)
        except OSError as e:
            error = e
    if keys:
        config = _load(path_with_arg, ())["config"].value  # raises if the file is at fault
        for key in keys:
            if not _has_key(config, key):
                raise ValueError(f"unknown config key {key!r}")
        raise ValueError(f"cannot override {', '.join(map(repr, keys))}: {_describe(error)}")
    load_module(path)  # says so if the file does not import or has no get_config
    if error is None:
        raise ValueError(f"get_config in {path} must return an ml_collections.ConfigDict")
    raise ValueError(f"get_config({arg!r}) in {path} failed: {_describe(error)}")


def _has_key(config: ConfigDict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _describe(error: BaseException, with_type: bool = True) -> str:
    """'ValueError: message' of the error the config file raised, on one line."""
    while isinstance(error, flags.Error) or str(error).startswith(_WRAPPED):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}" if with_type else text


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


def bad_input(error: Exception | str) -> int:
    """Prints the one ``error:`` line of bad input and returns its exit code."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """train.py's command line: --config FILE[:ARG] --workdir DIR [--config.key=value ...].

    A pack (several runs of one network trained as one program) gives
    ``--run DIR [KEY=VALUE ...]`` per run instead of ``--workdir``;
    ``args.runs`` lists them as (DIR, overrides), empty for a lone run.
    """
    p = ArgumentParser(prog="train.py", description="Train one network from a config file.")
    p.add_argument("--config", required=True, help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", help="run directory (resumed if it exists)")
    p.add_argument("--run", action="append", nargs="+", default=[],
                   metavar=("DIR", "KEY=VALUE"),
                   help="one run of a pack, instead of --workdir: its directory and its own "
                        "overrides (repeat for each run; training/pack.py)")
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
    if (args.workdir is None) == (not args.run):
        raise ValueError("give either --workdir DIR (one run) or --run DIR [KEY=VALUE ...] "
                         "for each run of a pack")
    args.runs = [parse_pack_run(item) for item in args.run]
    dirs = [os.path.realpath(d) for d, _ in args.runs]
    for d in dirs:
        if dirs.count(d) > 1:
            raise ValueError(f"run directory {d} is given twice")
    return args


def parse_pack_run(item: list[str]) -> tuple[str, dict[str, str]]:
    """['W/seed=1', 'seed=1', 'optimizer.lr=0.1'] -> ('W/seed=1', {'seed': '1', ...})."""
    workdir, *pairs = item
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.removeprefix("--config.").partition("=")
        if not sep or not key:
            raise ValueError(f"--run {workdir}: {pair!r} must look like KEY=VALUE")
        overrides[key] = value
    return workdir, overrides


def pack_command(python: str, train_script: str, config: str, overrides: dict[str, str],
                 runs: list[tuple[str, dict[str, str]]]) -> list[str]:
    """The ``train.py`` command of a pack: shared overrides, then one ``--run`` per run."""
    command = [python, train_script, "--config", config]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    for workdir, own in runs:
        command += ["--run", workdir, *(f"{k}={v}" for k, v in own.items())]
    return command
