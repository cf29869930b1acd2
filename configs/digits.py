"""scikit-learn's bundled 8x8 digits: the embedded dataset that needs no download.

1,797 grey images of 10 classes, a fixed stratified split (1,437 train / 360
test). The paper's CIFAR networks run unchanged on 8x8 inputs (maps 8/4/2).
The recipe is the paper's, shortened: batch 128, SGD 0.9, LR 0.1 divided by
10 at 50% and 75% of 600 steps (~53 epochs), no flips (digits are not
mirror-symmetric) and no crops.

Run (README.md says how long it takes):
    python train.py --config configs/digits.py:resnet-20 --workdir runs/digits-resnet-20
Expect a test error below 5% for resnet-20 and plain-20 alike; plain-56 ends
with a much higher training error than plain-20 (the degradation problem).
"""

import ml_collections

from configs import default, network_arg


def get_config(arg: str | None = "resnet-20") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = "digits"
    c.model.in_channels = 1
    c.model.num_classes = 10
    c.augment.crop_padding = 0
    c.augment.flip = False
    c.num_steps = 600
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.eval_batch_size = 360
    network_arg.apply(c, arg)
    c.lock()
    return c


def search_space(arg: str | None = None) -> dict[str, str]:
    """What ``python -m experiments.search configs/digits.py`` tunes without ``--space``:
    the learning rate and the weight decay, log-uniform around the paper's 0.1 and 1e-4."""
    del arg  # the same space for every network
    return {"optimizer.lr": "loguniform(0.01, 1)",
            "optimizer.weight_decay": "loguniform(1e-5, 1e-3)"}
