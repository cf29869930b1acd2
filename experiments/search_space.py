"""A search space: config keys and the distributions their values are drawn from.

    --space optimizer.lr=loguniform(0.01,1)      a float in [a, b], uniform in log(x)
    --space optimizer.momentum=uniform(0.8,0.99) a float in [a, b]
    --space schedule.warmup_steps=int(0,400)     an integer in [a, b]
    --space model.shortcut=choice(A,B)           one of the values, typed like the key

or, without ``--space``, the config file's ``search_space(arg)``: a dict of
the same texts, ``{"optimizer.lr": "loguniform(0.01, 1)", ...}``.

``parse_space`` reads the texts and checks each against the key's type in
the loaded config (uniform and loguniform take float keys, int takes int
keys, every choice value must parse as the key's type; loguniform needs
bounds > 0); every failure is one ``ValueError`` line. ``Param`` gives
Optuna's distribution, the grid of its values and the ``--config.KEY=VALUE``
text of a drawn value. Light: no JAX.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import ml_collections
from optuna import distributions

from configs.network_arg import parse_bool
from training import command_line

KINDS = ("uniform", "loguniform", "int", "choice")
MAX_GRID = 10_000  # values of one int(a,b) the grid sampler may enumerate
FORM = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` of ``KINDS`` with its bounds or its choices (typed)."""

    key: str
    kind: str
    values: tuple  # (low, high) or the choices
    text: str  # as written, e.g. 'loguniform(0.01,1)'

    def distribution(self) -> distributions.BaseDistribution:
        if self.kind == "choice":
            return distributions.CategoricalDistribution(self.values)
        low, high = self.values
        if self.kind == "int":
            return distributions.IntDistribution(low, high)
        return distributions.FloatDistribution(low, high, log=self.kind == "loguniform")

    def grid(self) -> list:
        """The values a grid search visits; a ValueError for a continuous distribution."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int" and self.values[1] - self.values[0] < MAX_GRID:
            return list(range(self.values[0], self.values[1] + 1))
        raise ValueError(f"--sampler grid needs choice(...) or a short int(a,b) for "
                         f"{self.key}, not {self.text}")

    def corners(self) -> list:
        """The values that bound what a trial may get: the bounds, or every choice."""
        return list(self.values)


def override_text(value: Any) -> str:
    """A drawn value as a ``--config.KEY=VALUE`` text (floats in full precision)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def short_text(value: Any) -> str:
    """A drawn value for a run directory's name: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _split_args(text: str) -> list[str]:
    """'a, (1, 2), b' -> ['a', '(1, 2)', 'b']: commas inside brackets do not split."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def key_type(config: ml_collections.ConfigDict, key: str) -> type:
    """The type of a config key (a placeholder's declared type); ValueError if unknown."""
    node, *path, leaf = [config, *key.split(".")]
    for part in path:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"unknown config key {key!r}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"unknown config key {key!r}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"config key {key!r} is a section, not a value")
    kind = node.get_ref(leaf).get_type()
    return tuple if kind is list else kind


def _number(text: str, kind: type, key: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} of {key} is not {_a(kind)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} {text!r} of {key} is not a finite number")
    return value


def _a(kind: type) -> str:
    return {float: "a number", int: "an integer", bool: "true or false",
            str: "a string", tuple: "a tuple such as (16, 32, 64)"}.get(kind, kind.__name__)


def _choice(text: str, kind: type, key: str):
    """A choice value typed like the key; None words give None."""
    if text in command_line.NONE_WORDS:
        return None
    if kind is bool:
        try:
            return parse_bool(text)
        except ValueError:
            raise ValueError(f"choice value {text!r} of {key} is not true or false") from None
    if kind in (int, float):
        if kind is int and re.fullmatch(r"[+-]?\d+", text) is None:
            raise ValueError(f"choice value {text!r} of {key} is not an integer")
        return _number(text, kind, key, "choice value")
    if kind is tuple:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, tuple):
            raise ValueError(f"choice value {text!r} of {key} is not {_a(tuple)}")
        return text  # Optuna's choices are scalars: a tuple stays its text
    return text.strip("'\"")


def parse_param(key: str, text: str, config: ml_collections.ConfigDict) -> Param:
    """``KEY`` and ``DIST(...)`` -> a checked ``Param``; one-line ValueError otherwise."""
    kind_of_key = key_type(config, key)
    match = FORM.match(text)
    if match is None or match.group(1) not in KINDS:
        raise ValueError(f"--space {key}={text}: the distribution must be one of "
                         "uniform(a,b), loguniform(a,b), int(a,b), choice(v1,v2,...)")
    kind, args = match.group(1), _split_args(match.group(2))
    if kind == "choice":
        if len(args) < 2 or not all(args):
            raise ValueError(f"--space {key}={text}: choice needs at least two values")
        values = tuple(_choice(a, kind_of_key, key) for a in args)
        if len(set(values)) < len(values):
            raise ValueError(f"--space {key}={text}: a choice value is given twice")
        return Param(key, kind, values, text)
    if len(args) != 2:
        raise ValueError(f"--space {key}={text}: {kind} takes two bounds, {kind}(low,high)")
    wanted = int if kind == "int" else float
    if kind_of_key is not wanted:
        other = "int(a,b) or choice(...)" if kind_of_key is int else "choice(...)"
        if kind_of_key is float:
            other = "uniform(a,b) or loguniform(a,b)"
        raise ValueError(f"--space {key}={text}: {key} holds {_a(kind_of_key)}, which "
                         f"{kind} cannot give; use {other}")
    if kind == "int" and any(re.fullmatch(r"\s*[+-]?\d+\s*", a) is None for a in args):
        raise ValueError(f"--space {key}={text}: int takes integer bounds")
    low, high = (_number(a, wanted, key, "bound") for a in args)
    if not low < high:
        raise ValueError(f"--space {key}={text}: the low bound must be below the high one")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"--space {key}={text}: loguniform needs bounds > 0")
    return Param(key, kind, (low, high), text)


def parse_space(items: dict[str, str], config: ml_collections.ConfigDict) -> list[Param]:
    """Every ``KEY: DIST`` checked against ``config``; at least one is needed."""
    if not items:
        raise ValueError("no search space: give --space KEY=DIST (e.g. "
                         "--space 'optimizer.lr=loguniform(0.01,1)') or a search_space(arg) "
                         "function in the config file")
    return [parse_param(key, text, config) for key, text in items.items()]


def parse_space_args(texts: list[str]) -> dict[str, str]:
    """['optimizer.lr=loguniform(0.01,1)', ...] -> {'optimizer.lr': 'loguniform(0.01,1)'}."""
    out: dict[str, str] = {}
    for item in texts:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not key or not text.strip():
            raise ValueError(f"--space {item!r} must look like KEY=DIST, e.g. "
                             "optimizer.lr=loguniform(0.01,1)")
        if key in out:
            raise ValueError(f"--space gives {key} twice")
        out[key] = text.strip()
    return out


def file_space(config_path: str) -> dict[str, str]:
    """The config file's ``search_space(arg)``; {} when it has none."""
    path, arg = command_line.split_config_arg(config_path)
    module = command_line.load_module(path)
    if not hasattr(module, "search_space"):
        return {}
    try:
        space = command_line.call_with_arg(module.search_space, arg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is bad input
        raise ValueError(f"search_space() in {path} failed: {type(e).__name__}: {e}") from e
    if not isinstance(space, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in space.items()):
        raise ValueError(f"search_space() in {path} must return a dict of KEY: 'DIST(...)' "
                         "texts")
    return dict(space)
