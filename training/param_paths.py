"""Parameters by where they sit: paths of names such as ('stages', 0, 'repeated', 'kernel').

Rules that depend on a parameter's place (weight decay on kernels only,
max-norm, frozen stages) read these paths from JAX key paths, so they work
on any tree of the same layout: NNX ``State``s and optax's masked trees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def key_name(key: Any) -> Any:
    """The plain name of one JAX key-path entry (dict key, sequence index or attribute)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def names(keypath: tuple) -> tuple:
    """A JAX key path as a tuple of names, without the trailing ``.value`` of NNX Variables."""
    out = tuple(key_name(k) for k in keypath)
    return out[:-1] if out and out[-1] == "value" else out


def map_with_names(fn: Callable[[tuple, Any], Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose function also gets each leaf's path of names."""
    return jax.tree.map_with_path(lambda kp, *leaves: fn(names(kp), *leaves), tree, *rest)


def is_kernel(path: tuple) -> bool:
    """Conv and linear weights (not biases, not BatchNorm scales and offsets)."""
    return bool(path) and path[-1] == "kernel"
