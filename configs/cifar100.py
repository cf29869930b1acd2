"""CIFAR-100 with the paper's CIFAR-10 recipe (not in the paper; a common extension).

Run (downloads CIFAR-100 through TFDS on first use, or reads --config.data_dir):
    python train.py --config configs/cifar100.py:resnet-56 --workdir runs/c100-resnet-56
Expect roughly 28-30% test error for ResNet-56 (the paper has no CIFAR-100 numbers).
"""

import ml_collections

from configs import cifar10


def get_config(arg: str | None = "resnet-20") -> ml_collections.ConfigDict:
    c = cifar10.get_config(arg)
    with c.unlocked():
        c.dataset = "cifar100"
        c.model.num_classes = 100
    return c
