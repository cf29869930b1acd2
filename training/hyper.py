"""The per-run values a training step reads: its seed and its scalar optimizer and schedule values.

A lone run's step reads them from its config as Python numbers (constants of
its program); a pack's step gets each run's as traced scalars (``training.pack``
holds them with a leading run axis), so that one compiled program serves any
values. They reach the step, the schedule and the optimizer as one explicit
argument (``Hyper``), never by rewriting the config inside a trace.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import ml_collections

# Each field's config key: the keys a pack's runs may differ in and the step reads.
KEYS = {
    "seed": "seed",
    "lr": "optimizer.lr",
    "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay",
    "decay_factor": "schedule.decay_factor",
    "warmup_lr": "schedule.warmup_lr",
}


def config_value(config: ml_collections.ConfigDict, key: str) -> Any:
    """``config['a.b']`` for a dotted key."""
    for part in key.split("."):
        config = config[part]
    return config


@flax.struct.dataclass
class Hyper:
    """Seed (layer randomness), base LR, momentum, weight decay, LR decay factor, warm-up LR."""

    seed: Any
    lr: Any
    momentum: Any
    weight_decay: Any
    decay_factor: Any
    warmup_lr: Any

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Hyper:
        """The config's own values (Python numbers)."""
        return cls(**{name: config_value(config, key) for name, key in KEYS.items()})
