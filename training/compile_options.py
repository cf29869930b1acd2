"""XLA compiler options for the project's jitted programs, chosen per backend.

Why: on CPU, XLA hands 2-D convolutions with more than 16 channels to
YNNPACK by default (in the jaxlib releases BENCHMARKS.md names). For the
shapes of the CIFAR ResNets, XLA's own (Eigen) convolutions are faster, and
much faster for the kernel gradient (written as a convolution with the batch
as its features, see ``models/conv.py``), and so is the whole training step
(BENCHMARKS.md has the per-shape and per-step figures). So the CPU programs
take convolutions out of XLA's YNNPACK fusion types and leave its other
defaults alone. GPUs and TPUs get no options.

Set ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` to choose for
yourself: then nothing is overridden here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default YNNPACK fusion types less INDIVIDUAL_CONVOLUTION (BENCHMARKS.md says for
# which jaxlib releases this was measured). Given as a list: compiler_options, unlike
# XLA_FLAGS, does not take the '-TYPE' form.
CPU_OPTIONS = {
    YNN_FUSION_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """The options for programs compiled for ``backend`` (default: JAX's default backend)."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or YNN_FUSION_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_OPTIONS)


def jit(fun: Callable, **kwargs: Any) -> Any:
    """``jax.jit`` with this backend's ``compiler_options``; use it for every program here."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
