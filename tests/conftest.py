"""Test set-up: four fake CPU devices and fast compilation, before JAX initialises.

Tests use tiny models and few steps, where XLA compile time dominates, so most
compiler optimisations are switched off. Subprocesses started by tests inherit
the same environment variables.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
