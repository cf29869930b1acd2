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
    c.augment = ml_collections.ConfigDict()
    c.augment.crop_padding = 4  # in memory: zero-pad by this many pixels, random crop; 0 = off
    c.augment.flip = True  # random horizontal flip
    c.augment.scale_range = (256, 480)  # ImageNet stream: shorter side uniform in [lo, hi]
    c.augment.crop_size = 224  # ImageNet stream: square training crop
    # In memory: resize by a factor uniform in (lo, hi), 1 <= lo <= hi, then a random
    # crop of the original size (before the pad-and-crop). None = off (paper, CIFAR).
    c.augment.scale = placeholder(tuple)
    # HSV colour jitter (RGB only), strength in [0, 1]; 0 = off (paper). At 1: S and V
    # raised to a power log-uniform in [1/4, 4], times [0.7, 1.4], plus [-0.1, 0.1];
    # H shifted by [-0.1, 0.1]; smaller strengths shrink every range towards identity.
    c.augment.hsv_jitter = 0.0
    # AlexNet "fancy PCA" lighting: alpha ~ N(0, this) per image and eigenvector of the
    # train set's colour covariance; 0 = off. AlexNet and the paper's ImageNet runs: 0.1.
    c.augment.pca_lighting = 0.0
    # Input normalisation, fitted on the training split and applied alike at eval:
    # 'pixel_mean' (paper, CIFAR: subtract the mean image) | 'channel_standardize'
    # (per-channel mean and std; ImageNet streams must use it) | 'zca' | 'pca' whitening.
    c.normalize = "pixel_mean"
    # Whitening over 'image' (flattened H*W*C vectors; zca only) | 'channel' (each
    # pixel's colour), with whiten_epsilon added to the covariance's eigenvalues
    # (pixels in [0, 1]; larger = milder whitening of low-variance directions).
    c.whiten_over = "image"
    c.whiten_epsilon = 1e-3
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
    # 'cifar' (6n+2 basic, 9n+2 bottleneck) | 'imagenet' (18/34/50/101/152) | 'wrn' (6n+4)
    # | 'resnext' | 'densenet' | 'fractal' | 'vgg' | 'alexnet' | 'nin' | 'googlenet' | 'squeezenet'
    c.model.family = "cifar"
    c.model.depth = 20
    c.model.plain = False
    # CIFAR family: 'basic' | 'bottleneck'; None = basic, bottleneck at depths 164 and 1001
    c.model.block = placeholder(str)
    c.model.preact = False  # pre-activation ordering (He et al. 2016); WRNs always use it
    c.model.width_factor = 1  # WRN-d-k's k (family 'wrn' only)
    c.model.shortcut = placeholder(str)  # A | B | C; None = the published default for the net
    c.model.num_classes = 10
    c.model.in_channels = 3
    c.model.widths = placeholder(tuple)  # None = family default (16, 32, 64)
    c.model.stem = placeholder(str)  # None = the family's own
    c.model.bottleneck_stride = "first"  # 'first' (paper) | 'middle' (torchvision v1.5)
    c.model.init = "he"  # 'he' sqrt(2/n) (paper) | 'xavier' sqrt(1/n) | 'small' 0.01 | 'zeros'
    c.model.init_mode = "fan_in"  # n = fan-in (paper, Caffe MSRAFiller) | 'fan_out' | 'fan_avg'
    # 'relu' (paper) | 'leaky_relu' | 'prelu' (learned, per channel) | 'rrelu' | 'tanh' | 'sigmoid'
    c.model.activation = "relu"
    c.model.activation_slope = 0.01  # leaky_relu's negative slope
    # Stochastic depth (Huang et al. 2016): residual branches dropped at random in training,
    # block l of L surviving with 1 - l/L * (1 - survival_last); all kept (scaled) at test.
    c.model.stochastic_depth = False
    c.model.survival_last = 0.5
    c.model.block_dropout = 0.0  # dropout between a basic block's two convs (WRN: 0.3)
    c.model.head_dropout = 0.0  # dropout before the classifier
    c.model.zero_init_residual = False
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"
    c.model.bn_momentum = 0.9  # running = m * running + (1 - m) * batch
    # How the blocks run (the results are the same; the checkpoint layout is not):
    # each stage's identical blocks stacked and run by one compiled body
    # (nnx.scan), so compile time does not grow with depth (ResNet-1202 included);
    # and per-block recomputation of activations in the backward pass (memory).
    c.model.scan_blocks = True
    # Blocks per scan iteration: 'auto' (1 on CPU, the whole stage on GPU/TPU),
    # 'full' or an int. Speed only; the parameters stay stacked either way.
    c.model.scan_unroll = "auto"
    c.model.remat_blocks = False
    # The families beyond the ResNets (models/families.py; None = the paper's value, or off).
    # A key set for a family it does not apply to is an error. All None by default, so the
    # configs of runs made before these keys existed read as unchanged.
    c.model.cardinality = placeholder(int)  # ResNeXt's C (None: 8 CIFAR, 32 ImageNet)
    c.model.group_width = placeholder(int)  # ResNeXt's d (None: 64 CIFAR, 4 ImageNet)
    c.model.growth_rate = placeholder(int)  # DenseNet's k (None: 12 CIFAR, 32/48 ImageNet)
    c.model.compression = placeholder(float)  # DenseNet's theta (None: 0.5 for BC, else 1)
    c.model.columns = placeholder(int)  # FractalNet's C (None: from depth and widths)
    c.model.drop_path = placeholder(float)  # FractalNet: local drop probability per join input
    c.model.global_drop_path = placeholder(float)  # FractalNet: batch fraction with one column
    c.model.bn = placeholder(bool)  # BatchNorm in VGG/AlexNet/NiN/GoogLeNet/SqueezeNet
    c.model.layout = placeholder(str)  # 'paper' | 'torchvision' (AlexNet, GoogLeNet)
    c.model.version = placeholder(str)  # SqueezeNet: '1.0' | '1.1'
    c.model.aux_heads = placeholder(bool)  # GoogLeNet's auxiliary classifiers (weight 0.3)
    c.model.fc_width = placeholder(int)  # VGG/AlexNet fully connected width (None: 4096)
    c.model.width_scale = placeholder(float)  # AlexNet/VGG/NiN/GoogLeNet/SqueezeNet conv widths

    c.batch_size = 128  # global batch, split evenly across devices
    c.batch_norm = "per_device"  # 'per_device' (paper's multi-GPU runs) | 'sync' (global batch)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4  # L2, added to the gradient before momentum (as Caffe)
    c.optimizer.weight_decay_on = "all"  # 'all' parameters | 'kernels' (conv/linear weights)
    # 'coupled': wd * p added to the gradient before momentum (Caffe, the paper) |
    # 'decoupled': p -= lr * wd * p outside the momentum (AdamW-style; wd ~ 10x larger)
    c.optimizer.weight_decay_mode = "coupled"
    c.optimizer.l1 = 0.0  # L1: l1 * sign(p) added to the gradient, same mask as weight_decay_on
    # Max-norm: after each step, rescale each unit's incoming weight vector (conv
    # kernel: over H, W, in per output channel; linear: over inputs) to norm <= c
    # (typically 3-4). Kernels only. None = off.
    c.optimizer.max_norm = placeholder(float)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "piecewise"  # 'piecewise' | 'cosine' | 'plateau'
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
    # 'plateau': lr = optimizer.lr, divided by plateau_factor after plateau_patience
    # evaluations in a row whose validation error is not below the best so far minus
    # plateau_threshold (needs val_examples > 0); never below plateau_min_lr (None = 0).
    c.schedule.plateau_factor = 10.0  # 2, 5 or 10 are usual; must be > 1
    c.schedule.plateau_patience = 5  # evaluations (every eval_every_steps), >= 1
    c.schedule.plateau_threshold = 0.0  # absolute error (fraction), >= 0
    c.schedule.plateau_min_lr = placeholder(float)

    # Fine-tuning: start from another run's checkpoint (every parameter and BN statistic
    # but the classifier head, which is fresh, so model.num_classes may differ).
    c.finetune = ml_collections.ConfigDict()
    c.finetune.from_run = placeholder(str)  # the source run's workdir; None = off
    c.finetune.from_step = placeholder(int)  # its checkpoint step; None = the latest
    # Layers kept fixed (no update, BN on running statistics): 'none' | 'stem' |
    # 'stage1' (stem + first stage) | 'stage2' | ... | 'all' (linear probe on features)
    c.finetune.freeze = "none"

    c.num_steps = 64000  # paper: 64k iterations at batch 128
    c.num_epochs = placeholder(float)  # when set, wins over num_steps

    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_batch_size = 500
    c.layer_responses = True  # write layer_responses.json (paper's Fig. 7) at the end
    # Log, at every evaluation, the fraction of rectifier units (channels) that never
    # activate on a fixed batch of training images ('dead_units'); rectifier nets only.
    c.dead_units = True
    c.seed = 0
    # One dispatch per log interval (lax.fori_loop) instead of one per step.
    c.loop_on_device = True
    return c


# The words a boolean key takes, in any case, from the config argument and from
# --config.KEY=VALUE (training/command_line.py); anything else is an error.
BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(text: str) -> bool:
    """``true``/``yes``/``1`` or ``false``/``no``/``0``, any case; else a one-line ValueError."""
    value = BOOLEAN_WORDS.get(text.strip().lower())
    if value is None:
        raise ValueError("expected true or false (or yes/no, 1/0)")
    return value


NETWORK_NAMES = ("plain-DEPTH, resnet-DEPTH, preact-DEPTH, plain-preact-DEPTH, wrn-DEPTH-K "
                 "or plain-wrn-DEPTH-K")


def apply_network_name(config: ml_collections.ConfigDict, net: str) -> None:
    """Sets the model keys a network name stands for: ``resnet-56``, ``preact-164``, ``wrn-28-10``.

    The grammar is the one ``models.NetworkSpec.name`` writes. The family is kept for
    plain/resnet/preact names (so ``configs/imagenet.py:resnet-50`` stays an ImageNet net);
    ``wrn`` sets the WRN family.
    """
    parts = net.split("-")
    plain_wrn = parts[:2] == ["plain", "wrn"]
    wrn = parts[1:] if plain_wrn else parts
    if wrn[0] == "wrn" and len(wrn) == 3 and wrn[1].isdigit() and wrn[2].isdigit():
        config.model.family = "wrn"
        config.model.plain = plain_wrn
        config.model.depth, config.model.width_factor = int(wrn[1]), int(wrn[2])
        return
    kind, depth = "-".join(parts[:-1]), parts[-1]
    kinds = {"plain": (True, False), "resnet": (False, False), "preact": (False, True),
             "plain-preact": (True, True)}
    if kind not in kinds or not depth.isdigit():
        raise ValueError(f"network name {net!r} must be {NETWORK_NAMES}, e.g. resnet-56, "
                         "preact-164 or wrn-28-10")
    config.model.plain, config.model.preact = kinds[kind]
    config.model.depth = int(depth)


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies ``plain-56`` / ``resnet-110,shortcut=B,seed=3`` / ``wrn-28-10`` to ``config``."""
    if not arg:
        return config
    net, *pairs = arg.split(",")
    try:
        apply_network_name(config, net)
    except ValueError:
        raise ValueError(
            f"config argument {arg!r} must start with {NETWORK_NAMES}, "
            "e.g. resnet-56, preact-164, wrn-28-10 or plain-20,seed=3"
        ) from None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"config argument part {pair!r} must be key=value")
        target = config if key in config else config.model
        if key not in target:
            raise ValueError(f"unknown key {key!r} in config argument {arg!r}")
        field = target.get_ref(key)
        kind = field.get_type()
        if kind not in (bool, int, float, str):
            raise ValueError(f"key {key!r} cannot be set from the config argument")
        try:
            target[key] = parse_bool(value) if kind is bool else kind(value)
        except ValueError as e:
            why = e if kind is bool else f"expected {kind.__name__}"
            raise ValueError(f"bad value {value!r} for config key {key!r} in config argument "
                             f"{arg!r}: {why}") from None
    return config
