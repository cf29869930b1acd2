"""Demonstration studies of the knobs beyond the paper's recipe, on the embedded digits.

- ``init`` (default): a plain-20 net
  initialised with zeros, small Gaussians (std 0.01), Xavier (sqrt(1/n)) and He
  (sqrt(2/n), the paper's). Expect zeros to fail to learn (every unit of a
  layer stays identical and no kernel gets a gradient: training error near
  chance, 90%) and the others to train.
- ``activation``: the same net with ReLU (paper), leaky ReLU, PReLU, RReLU,
  tanh and sigmoid; the report ranks them and logs the dead-unit fraction.

    python -m experiments.sweep configs/knobs.py:init --workdir runs/knobs-init
"""

import ml_collections

from configs import digits

STUDIES = {
    "init": ("model.init", ("zeros", "small", "xavier", "he")),
    "activation": ("model.activation",
                   ("relu", "leaky_relu", "prelu", "rrelu", "tanh", "sigmoid")),
}


def _study(arg: str | None) -> str:
    study = arg or "init"
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    return study


def get_config(arg: str | None = "init") -> ml_collections.ConfigDict:
    _study(arg)
    return digits.get_config("plain-20")


def sweep(add, arg: str | None = "init") -> None:
    key, values = STUDIES[_study(arg)]
    for value in values:
        add(**{key: value})
