"""Shared defaults: the paper's CIFAR-10 recipe (He et al. 2015, Sec. 4.2). Data only.

Dataset files start from ``get_config()`` here and change what differs. The
argument every dataset file takes (``plain-56``, ``resnet-110``,
``resnet-56,shortcut=B,seed=3``) is read by ``configs.network_arg``.

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
    c.augment = _augment()
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
    c.imbalance = _imbalance()

    c.model = _model()

    c.batch_size = 128  # global batch, split evenly across devices
    c.batch_norm = "per_device"  # 'per_device' (paper's multi-GPU runs) | 'sync' (global batch)

    c.optimizer = _optimizer()

    c.schedule = _schedule()

    c.finetune = _finetune()

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


def _augment() -> ml_collections.ConfigDict:
    """``augment``: the paper's CIFAR augmentation (pad 4, crop, flip); the rest off."""
    s = ml_collections.ConfigDict()
    s.crop_padding = 4  # in memory: zero-pad by this many pixels, random crop; 0 = off
    s.flip = True  # random horizontal flip
    s.scale_range = (256, 480)  # ImageNet stream: shorter side uniform in [lo, hi]
    s.crop_size = 224  # ImageNet stream: square training crop
    # In memory: resize by a factor uniform in (lo, hi), 1 <= lo <= hi, then a random
    # crop of the original size (before the pad-and-crop). None = off (paper, CIFAR).
    s.scale = placeholder(tuple)
    # HSV colour jitter (RGB only), strength in [0, 1]; 0 = off (paper). At 1: S and V
    # raised to a power log-uniform in [1/4, 4], times [0.7, 1.4], plus [-0.1, 0.1];
    # H shifted by [-0.1, 0.1]; smaller strengths shrink every range towards identity.
    s.hsv_jitter = 0.0
    # AlexNet "fancy PCA" lighting: alpha ~ N(0, this) per image and eigenvector of the
    # train set's colour covariance; 0 = off. AlexNet and the paper's ImageNet runs: 0.1.
    s.pca_lighting = 0.0
    return s


def _imbalance() -> ml_collections.ConfigDict:
    """``imbalance``: class imbalance of in-memory datasets, off by default."""
    s = ml_collections.ConfigDict()
    s.classes = placeholder(tuple)  # class ids to thin out, e.g. (0, 1, 2); None = off
    s.keep_fraction = 1.0  # in (0, 1]: share of each listed class kept (rounded, >= 1)
    # Counter-measure: 'none' | 'resample' (each example of a batch draws its class
    # uniformly, then an example of it) | 'reweight' (per-example loss times
    # inverse training-class frequency, weights averaging 1 over the training set).
    s.counter = "none"
    return s


def _model() -> ml_collections.ConfigDict:
    """``model``: the network (``models.build_model`` reads this section)."""
    s = ml_collections.ConfigDict()
    # 'cifar' (6n+2 basic, 9n+2 bottleneck) | 'imagenet' (18/34/50/101/152) | 'wrn' (6n+4)
    # | 'resnext' | 'densenet' | 'fractal' | 'vgg' | 'alexnet' | 'nin' | 'googlenet' | 'squeezenet'
    s.family = "cifar"
    s.depth = 20
    s.plain = False
    # CIFAR family: 'basic' | 'bottleneck'; None = basic, bottleneck at depths 164 and 1001
    s.block = placeholder(str)
    s.preact = False  # pre-activation ordering (He et al. 2016); WRNs always use it
    s.width_factor = 1  # WRN-d-k's k (family 'wrn' only)
    s.shortcut = placeholder(str)  # A | B | C; None = the published default for the net
    s.num_classes = 10
    s.in_channels = 3
    s.widths = placeholder(tuple)  # None = family default (16, 32, 64)
    s.stem = placeholder(str)  # None = the family's own
    s.bottleneck_stride = "first"  # 'first' (paper) | 'middle' (torchvision v1.5)
    s.init = "he"  # 'he' sqrt(2/n) (paper) | 'xavier' sqrt(1/n) | 'small' 0.01 | 'zeros'
    s.init_mode = "fan_in"  # n = fan-in (paper, Caffe MSRAFiller) | 'fan_out' | 'fan_avg'
    # 'relu' (paper) | 'leaky_relu' | 'prelu' (learned, per channel) | 'rrelu' | 'tanh' | 'sigmoid'
    s.activation = "relu"
    s.activation_slope = 0.01  # leaky_relu's negative slope
    # Stochastic depth (Huang et al. 2016): residual branches dropped at random in training,
    # block l of L surviving with 1 - l/L * (1 - survival_last); all kept (scaled) at test.
    s.stochastic_depth = False
    s.survival_last = 0.5
    s.block_dropout = 0.0  # dropout between a basic block's two convs (WRN: 0.3)
    s.head_dropout = 0.0  # dropout before the classifier
    s.zero_init_residual = False
    s.dtype = "float32"  # compute dtype: float32 | bfloat16
    s.param_dtype = "float32"
    s.bn_momentum = 0.9  # running = m * running + (1 - m) * batch
    # How the blocks run (the results are the same; the checkpoint layout is not):
    # each stage's identical blocks stacked and run by one compiled body
    # (nnx.scan), so compile time does not grow with depth (ResNet-1202 included);
    # and per-block recomputation of activations in the backward pass (memory).
    s.scan_blocks = True
    # Blocks per scan iteration: 'auto' (1 on CPU, the whole stage on GPU/TPU),
    # 'full' or an int. Speed only; the parameters stay stacked either way.
    s.scan_unroll = "auto"
    s.remat_blocks = False
    # The families beyond the ResNets (models/families.py; None = the paper's value, or off).
    # A key set for a family it does not apply to is an error. All None by default, so the
    # configs of runs made before these keys existed read as unchanged.
    s.cardinality = placeholder(int)  # ResNeXt's C (None: 8 CIFAR, 32 ImageNet)
    s.group_width = placeholder(int)  # ResNeXt's d (None: 64 CIFAR, 4 ImageNet)
    s.growth_rate = placeholder(int)  # DenseNet's k (None: 12 CIFAR, 32/48 ImageNet)
    s.compression = placeholder(float)  # DenseNet's theta (None: 0.5 for BC, else 1)
    s.columns = placeholder(int)  # FractalNet's C (None: from depth and widths)
    s.drop_path = placeholder(float)  # FractalNet: local drop probability per join input
    s.global_drop_path = placeholder(float)  # FractalNet: batch fraction with one column
    s.bn = placeholder(bool)  # BatchNorm in VGG/AlexNet/NiN/GoogLeNet/SqueezeNet
    s.layout = placeholder(str)  # 'paper' | 'torchvision' (AlexNet, GoogLeNet)
    s.version = placeholder(str)  # SqueezeNet: '1.0' | '1.1'
    s.aux_heads = placeholder(bool)  # GoogLeNet's auxiliary classifiers (weight 0.3)
    s.fc_width = placeholder(int)  # VGG/AlexNet fully connected width (None: 4096)
    s.width_scale = placeholder(float)  # AlexNet/VGG/NiN/GoogLeNet/SqueezeNet conv widths
    return s


def _optimizer() -> ml_collections.ConfigDict:
    """``optimizer``: the paper's SGD (momentum 0.9, L2 1e-4 in the gradient)."""
    s = ml_collections.ConfigDict()
    s.lr = 0.1
    s.momentum = 0.9
    s.nesterov = False
    s.weight_decay = 1e-4  # L2, added to the gradient before momentum (as Caffe)
    s.weight_decay_on = "all"  # 'all' parameters | 'kernels' (conv/linear weights)
    # 'coupled': wd * p added to the gradient before momentum (Caffe, the paper) |
    # 'decoupled': p -= lr * wd * p outside the momentum (AdamW-style; wd ~ 10x larger)
    s.weight_decay_mode = "coupled"
    s.l1 = 0.0  # L1: l1 * sign(p) added to the gradient, same mask as weight_decay_on
    # Max-norm: after each step, rescale each unit's incoming weight vector (conv
    # kernel: over H, W, in per output channel; linear: over inputs) to norm <= c
    # (typically 3-4). Kernels only. None = off.
    s.max_norm = placeholder(float)
    return s


def _schedule() -> ml_collections.ConfigDict:
    """``schedule``: LR 0.1 divided by 10 at 50% and 75% of training."""
    s = ml_collections.ConfigDict()
    s.name = "piecewise"  # 'piecewise' | 'cosine' | 'plateau'
    # Piecewise boundaries: the first of these that is set is used.
    s.boundaries_steps = placeholder(tuple)  # paper: (32000, 48000)
    s.boundaries_epochs = placeholder(tuple)
    s.boundaries_fraction = (0.5, 0.75)  # of the total steps
    s.decay_factor = 0.1
    s.warmup_steps = 0  # linear ramp from 0 to lr over this many steps
    # The paper's ResNet-110 rule: lr = warmup_lr until a training batch's error is
    # below this fraction (0.8), then the normal schedule. None = off.
    s.warmup_until_error = placeholder(float)
    s.warmup_lr = 0.01
    # 'plateau': lr = optimizer.lr, divided by plateau_factor after plateau_patience
    # evaluations in a row whose validation error is not below the best so far minus
    # plateau_threshold (needs val_examples > 0); never below plateau_min_lr (None = 0).
    s.plateau_factor = 10.0  # 2, 5 or 10 are usual; must be > 1
    s.plateau_patience = 5  # evaluations (every eval_every_steps), >= 1
    s.plateau_threshold = 0.0  # absolute error (fraction), >= 0
    s.plateau_min_lr = placeholder(float)
    return s


def _finetune() -> ml_collections.ConfigDict:
    """``finetune``: start from another run's checkpoint; off by default."""
    s = ml_collections.ConfigDict()
    # Fine-tuning: start from another run's checkpoint (every parameter and BN statistic
    # but the classifier head, which is fresh, so model.num_classes may differ).
    s.from_run = placeholder(str)  # the source run's workdir; None = off
    s.from_step = placeholder(int)  # its checkpoint step; None = the latest
    # Layers kept fixed (no update, BN on running statistics): 'none' | 'stem' |
    # 'stage1' (stem + first stage) | 'stage2' | ... | 'all' (linear probe on features)
    s.freeze = "none"
    return s
