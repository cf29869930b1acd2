"""ImageNet (ILSVRC-2012) with the paper's recipe (He et al. 2015, Sec. 3.4).

Scale augmentation (shorter side random in [256, 480]), 224x224 random crop,
horizontal flip, per-channel normalisation; batch 256, SGD momentum 0.9,
weight decay 1e-4, LR 0.1 divided by 10 at 30 and 60 epochs (the paper divides
on plateaus, which fall there), 60e4 iterations (~120 epochs); single
centre-crop evaluation (the paper's headline numbers are 10-crop).
Option A shortcuts for 18/34 in the plain-vs-residual comparison (Table 2),
option B for 50/101/152 (Table 3).

TFDS cannot download ImageNet: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual, run
`tfds build imagenet2012 --data_dir DATA_DIR` once, then:
    python train.py --config configs/imagenet.py:resnet-34 --workdir runs/in-resnet-34 \
        --config.data_dir DATA_DIR
Expect (paper, Table 2, top-1 10-crop): plain-18 27.94%, plain-34 28.54%,
ResNet-18 27.88%, ResNet-34 25.03%.
"""

import ml_collections

from configs import default, network_arg


def get_config(arg: str | None = "resnet-18") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = "imagenet2012"
    c.model.family = "imagenet"
    c.model.num_classes = 1000
    c.batch_size = 256
    c.num_steps = 600_000
    c.schedule.boundaries_epochs = (30, 60)
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.eval_batch_size = 250
    c.layer_responses = False
    c.normalize = "channel_standardize"  # fixed ImageNet statistics (the stream is not scanned)
    network_arg.apply(c, arg)
    c.lock()
    return c
