"""JAX's persistent compilation cache, on by default: each program is compiled once per machine.

A run's train and eval programs take seconds (CPU, small nets) to tens of
seconds (GPU, deep nets) to compile, and every run of a sweep, every resume,
every benchmark and every test process compiles the same few programs again.
``enable()`` turns on JAX's own persistent cache (``jax_compilation_cache_dir``)
in a per-user directory, so the second process that needs a program reads
it from disk instead.

- Where: ``$XDG_CACHE_HOME/resnet-degradation/jax`` (``~/.cache/...`` when
  ``XDG_CACHE_HOME`` is unset). ``JAX_COMPILATION_CACHE_DIR=DIR`` moves it,
  ``JAX_ENABLE_COMPILATION_CACHE=false`` turns it off (JAX's own variables);
  deleting the directory clears it.
- What is reused: JAX keys each entry by the program, the jax/jaxlib
  versions, the backend and its version, the devices, the compile options
  and the XLA flags (``XLA_FLAGS``), so an entry from another version or
  other flags is never read; XLA:CPU also refuses an executable compiled for
  another CPU's features. Every program is written, however fast it compiled
  (``jax_persistent_cache_min_compile_time_secs=0``): a run compiles many
  small ones.
- Several processes at once: with ``filelock`` installed, JAX bounds the
  directory (least recently used entries evicted beyond ``MAX_BYTES``) and
  takes a lock around every read and write, so no process reads an entry
  another is still writing. An entry left torn by a kill mid-write makes JAX
  warn and compile that program again (never a wrong program); clearing the
  directory removes it.

Explicit settings win: a variable or ``jax.config`` value set by the user is
kept.
"""

from __future__ import annotations

import importlib.util
import os

MAX_BYTES = 8 * 2**30  # least recently used entries go beyond this


def default_dir() -> str:
    """The per-user cache directory (XDG base directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet-degradation", "jax")


def enable() -> str | None:
    """Turns the persistent cache on (before the first compilation); returns its directory.

    Returns None, changing nothing, when the user turned it off
    (``JAX_ENABLE_COMPILATION_CACHE=false``). Imports JAX only here, so that light
    modules (the sweep launcher's) may name ``default_dir`` without it.
    """
    import jax  # noqa: PLC0415

    if not jax.config.jax_enable_compilation_cache:
        return None
    directory = jax.config.jax_compilation_cache_dir or default_dir()
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if ("JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ
            and importlib.util.find_spec("filelock") is not None):
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return directory
