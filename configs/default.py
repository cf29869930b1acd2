"""Shared defaults: the paper's CIFAR-10 recipe (He et al. 2015, Sec. 4.2), and arg parsing.

Dataset files start from ``get_config()`` here and change what differs. The
argument every dataset file takes names the network and optional overrides:
``plain-56``, ``resnet-110``, ``resnet-56,shortcut=B,seed=3``.

Durations may be given in steps or epochs; ``train.py`` converts them to
steps in one place, from the final config (after command-line overrides).
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = placeholder(str)  # TFDS data_dir; None = TFDS default (~/tensorflow_datasets)
    c.data_seed = 0  # seed of the train/val(/test) splits
    c.val_examples = 0  # hold out this many training examples (paper: 5000 of 50k)
    c.augment = ml_collections.ConfigDict(
        dict(crop_padding=4, flip=True, scale_range=(256, 480), crop_size=224)
    )
    # Class imbalance (in-memory datasets only): keep a fraction of some classes'
    # training examples (the split's val and test examples are untouched); the
    # subset is a pure function of data_seed. Off by default (the paper's data).
    c.imbalance = ml_collections.ConfigDict()
    c.imbalance.classes = placeholder(tuple)  # class ids to thin out, e.g. (0, 1, 2); None = off
    c.imbalance.keep_fraction = 1.0  # in (0, 1]: share of each listed class kept (rounded, >= 1)
    # Counter-measure: 'none' | 'resample' (each example of a batch draws its class
    # uniformly, then an example of it) | 'reweight' (per-example loss times
    # inverse training-class frequency, weights averaging 1 over the training set).
    c.imbalance.counter = "none"

    c.model = ml_collections.ConfigDict()
    c.model.family = "cifar"  # 'cifar' (6n+2) | 'imagenet' (18/34/50/101/152)
    c.model.depth = 20
    c.model.plain = False
    c.model.shortcut = placeholder(str)  # A | B | C; None = the paper's default for the net
    c.model.num_classes = 10
    c.model.in_channels = 3
    c.model.widths = placeholder(tuple)  # None = family default (16, 32, 64)
    c.model.stem = placeholder(str)  # None = the family's own
    c.model.bottleneck_stride = "first"  # 'first' (paper) | 'middle' (torchvision v1.5)
    c.model.init_mode = "fan_in"  # He normal over fan-in (Caffe MSRAFiller) | 'fan_out'
    c.model.zero_init_residual = False
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"
    c.model.bn_momentum = 0.9  # running = m * running + (1 - m) * batch
    # How the blocks run (the results are the same; the checkpoint layout is not):
    # each stage's identical blocks stacked and run by one compiled body
    # (nnx.scan), so compile time does not grow with depth (ResNet-1202: 7 s);
    # and per-block recomputation of activations in the backward pass (memory).
    c.model.scan_blocks = True
    c.model.remat_blocks = False

    c.batch_size = 128  # global batch, split evenly across devices
    c.batch_norm = "per_device"  # 'per_device' (paper's multi-GPU runs) | 'sync' (global batch)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4  # L2, added to the gradient before momentum (as Caffe)
    c.optimizer.weight_decay_on = "all"  # 'all' parameters | 'kernels' (conv/linear weights)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "piecewise"  # 'piecewise' | 'cosine'
    # Piecewise boundaries: the first of these that is set is used.
    c.schedule.boundaries_steps = placeholder(tuple)  # paper: (32000, 48000)
    c.schedule.boundaries_epochs = placeholder(tuple)
    c.schedule.boundaries_fraction = (0.5, 0.75)  # of the total steps
    c.schedule.decay_factor = 0.1
    c.schedule.warmup_steps = 0  # linear ramp from 0 to lr over this many steps
    # The paper's ResNet-110 rule: lr = warmup_lr until a training batch's error is
    # below this fraction (0.8), then the normal schedule. None = off.
    c.schedule.warmup_until_error = placeholder(float)
    c.schedule.warmup_lr = 0.01

    c.num_steps = 64000  # paper: 64k iterations at batch 128
    c.num_epochs = placeholder(float)  # when set, wins over num_steps

    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_batch_size = 500
    c.layer_responses = True  # write layer_responses.json (paper's Fig. 7) at the end
    c.seed = 0
    # One dispatch per log interval (lax.fori_loop) instead of one per step.
    c.loop_on_device = True
    return c


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies ``plain-56`` / ``resnet-110,shortcut=B,seed=3`` to ``config`` (in place)."""
    if not arg:
        return config
    net, *pairs = arg.split(",")
    kind, _, depth = net.partition("-")
    if kind not in ("plain", "resnet") or not depth.isdigit():
        raise ValueError(
            f"config argument {arg!r} must start with plain-DEPTH or resnet-DEPTH, "
            "e.g. resnet-56 or plain-20,seed=3"
        )
    config.model.plain = kind == "plain"
    config.model.depth = int(depth)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"config argument part {pair!r} must be key=value")
        target = config if key in config else config.model
        if key not in target:
            raise ValueError(f"unknown key {key!r} in config argument {arg!r}")
        field = target.get_ref(key)
        kind = field.get_type()
        if kind is bool:
            target[key] = value.lower() in ("1", "true", "yes")
        elif kind in (int, float, str):
            target[key] = kind(value)
        else:
            raise ValueError(f"key {key!r} cannot be set from the config argument")
    return config
