"""The persistent compilation cache (training/compile_cache.py), in fresh processes.

Each case starts a new Python process (JAX reads its cache settings once), which
turns the cache on as ``train.py`` does, compiles one small program and reports
what JAX's own monitoring events said: a miss (compiled and written) or a hit
(read from the directory instead of compiled).
"""

import json
import os
import subprocess
import sys

from conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import json, os, sys
import jax, jax.numpy as jnp
from training import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
directory = compile_cache.enable()
x = jnp.arange(64.0).reshape(8, 8)
jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) @ x.T + float(sys.argv[1]))(x))
count = lambda name: sum(e == '/jax/compilation_cache/' + name for e in events)
print(json.dumps({"dir": directory, "hits": count("cache_hits"),
                  "misses": count("cache_misses"),
                  "used": count("compile_requests_use_cache")}))
"""


def probe(tmp_path, constant=1.0, **env):
    """Runs PROBE with XDG_CACHE_HOME in ``tmp_path`` and ``env`` (a None value unsets it)."""
    full = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": REPO}
    full.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's own; each case chooses
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    out = subprocess.run([sys.executable, "-c", PROBE, str(constant)], env=full, cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def entries(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith("-cache"))


def test_a_second_process_reads_the_program_instead_of_compiling_it(tmp_path):
    first = probe(tmp_path)
    where = str(tmp_path / "xdg" / "resnet-degradation" / "jax")  # the XDG default
    assert first["dir"] == where
    assert first["misses"] >= 1 and first["hits"] == 0
    written = entries(where)
    assert written
    second = probe(tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert entries(where) == written  # nothing compiled, nothing new written
    # Another program (another constant) is compiled, not mistaken for the first; the
    # process's small programs that did not change (arange, reshape) are still read.
    other = probe(tmp_path, constant=2.0)
    assert other["misses"] == 1 and other["hits"] == second["hits"] - 1
    assert len(entries(where)) == len(written) + 1


def test_other_xla_flags_never_reuse_an_entry(tmp_path):
    probe(tmp_path)
    again = probe(tmp_path, XLA_FLAGS=xla_flags(2))  # another device count
    assert again["misses"] >= 1 and again["hits"] == 0


def test_the_directory_moves_and_the_cache_turns_off_by_jaxs_own_variables(tmp_path):
    moved = tmp_path / "elsewhere"
    out = probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(moved))
    assert out["dir"] == str(moved) and entries(moved)
    off = probe(tmp_path, JAX_ENABLE_COMPILATION_CACHE="false")
    assert off["dir"] is None and off["used"] == 0 and off["hits"] == 0
    assert not (tmp_path / "xdg").exists()  # nothing written anywhere by default
