"""The config argument of the dataset files: a network name and optional ``key=value`` pairs.

``configs/digits.py:resnet-56,shortcut=B,seed=3`` names the network in the
grammar ``models.NetworkSpec.name`` writes (``plain-20``, ``resnet-56``,
``preact-164``, ``plain-preact-110``, ``wrn-28-10``), then sets keys of the
config or its model section. Booleans take true/false, yes/no or 1/0 in any
case (``parse_bool``, which ``training.command_line`` uses for
``--config.KEY=VALUE`` too). Each failure is a one-line ValueError.

It lives beside the config files, which call it, so that configs import
nothing but ml_collections and one another; ``default.py`` stays data.
"""

import ml_collections

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


def apply(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies ``plain-56``, ``resnet-110,shortcut=B,seed=3`` or ``wrn-28-10`` to ``config``."""
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
