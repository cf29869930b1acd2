"""CIFAR-10 with the paper's recipe (He et al. 2015, Sec. 4.2).

45k/5k train/validation split is optional (``val_examples=5000``); the paper
reports test error of the model trained on all 50k. Batch 128, LR 0.1 divided
by 10 at 32k and 48k iterations, stop at 64k; weight decay 1e-4, momentum 0.9;
4-pixel pad + random 32x32 crop + horizontal flip; per-pixel mean subtraction.
ResNet-110 (and deeper) warms up at LR 0.01 until the training error is
below 80% (about 400 iterations), as in the paper.

Run (downloads CIFAR-10 through TFDS on first use, or reads --config.data_dir):
    python train.py --config configs/cifar10.py:resnet-110 --workdir runs/c10-resnet-110
Expect (paper, Table 6, test error): ResNet-20 8.75%, 32 7.51%, 44 7.17%,
56 6.97%, 110 6.43%, 1202 7.93%; plain nets get worse with depth (Fig. 6).
"""

import ml_collections

from configs import default, network_arg


def get_config(arg: str | None = "resnet-20") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = "cifar10"
    c.model.num_classes = 10
    c.schedule.boundaries_steps = (32000, 48000)
    c.num_steps = 64000
    c.eval_batch_size = 500
    network_arg.apply(c, arg)
    if c.model.depth >= 110:
        c.schedule.warmup_until_error = 0.8
    if c.model.depth >= 1000:
        # ResNet-1202 keeps every block's activations otherwise: recomputing them
        # in the backward pass saves memory and, on CPU, time (BENCHMARKS.md).
        c.model.remat_blocks = True
    c.lock()
    return c


def search_space(arg: str | None = None) -> dict[str, str]:
    """What ``python -m experiments.search configs/cifar10.py:NET`` tunes without
    ``--space``: the learning rate and the weight decay, log-uniform around the paper's
    0.1 and 1e-4 (the search needs ``--config.val_examples=5000``, the paper's split)."""
    del arg  # the same space for every network
    return {"optimizer.lr": "loguniform(0.01, 1)",
            "optimizer.weight_decay": "loguniform(1e-5, 1e-3)"}
