"""Validates a study's runs for the sweep launcher, in a process of its own.

    echo '[{"model.depth": "56"}, ...]' | python -m training.check_runs configs/FILE.py[:ARG]

The launcher imports no JAX, Flax, Orbax or TensorFlow; the checks of a
run's config do (the networks, the optimizer, the data keys: the trainer's
own ``training.loop.validate_config``, without the machine-dependent ones).
Reads one JSON list of each run's overrides on stdin; prints one JSON list
of each run's pack group (``training.pack.group_of``), or exits 2 with the
first bad run's one ``error:`` line.
"""

from __future__ import annotations

import json
import sys

from training import command_line, loop, pack


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        return command_line.bad_input("usage: python -m training.check_runs CONFIG[:ARG] "
                                      "< overrides.json")
    try:
        groups = []
        for overrides in json.loads(sys.stdin.read()):
            config = command_line.load_config(argv[0], overrides)
            loop.validate_config(config, num_devices=None)
            groups.append(pack.group_of(config))
    except ValueError as e:
        return command_line.bad_input(e)
    print(json.dumps(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
