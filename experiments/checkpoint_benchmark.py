"""How long ``Checkpointer.save`` holds the training thread: Orbax's default array handler
against the project's (``training.checkpoints``: small arrays written whole by one replica).

Prints one JSON line per (config, handler): the first save (which compiles whatever the
handler runs on the device) and the median of the next ones. Run from the repository root::

    python -m experiments.checkpoint_benchmark --devices 4 --config configs/digits.py:resnet-56

``--devices N`` fakes N CPU devices (the state is replicated over all of them, as in
data-parallel training); on a GPU/TPU machine leave it out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True,
                        help="FILE[:ARG], repeatable")
    parser.add_argument("--devices", type=int, default=0, help="fake this many CPU devices")
    parser.add_argument("--saves", type=int, default=6)
    args = parser.parse_args(argv)
    if args.devices:  # before JAX initialises
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   f"--xla_force_host_platform_device_count={args.devices}")
    import jax  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415

    from data.device import replicate  # noqa: PLC0415
    from training import checkpoints, command_line, compile_cache, parallel, steps  # noqa: PLC0415

    compile_cache.enable()
    handlers = {"orbax default": lambda: ocp.type_handlers.register_type_handler(
                    jax.Array, ocp.type_handlers.ArrayHandler(), override=True),
                "small arrays whole": checkpoints._whole_small_arrays}
    for path in args.config:
        config = command_line.load_config(path, {})
        state = replicate(steps.create_train_state(config), parallel.make_mesh())
        for name, register in handlers.items():
            register()
            saver = checkpoints.Checkpointer(tempfile.mkdtemp(), 2)
            times = []
            for step in range(args.saves):
                start = time.perf_counter()
                saver.save(step, state)
                times.append(time.perf_counter() - start)
                saver.manager.wait_until_finished()
            print(json.dumps({"config": path, "handler": name, "devices": jax.device_count(),
                              "first_save_ms": round(1000 * times[0], 1),
                              "median_save_ms": round(1000 * statistics.median(times[1:]), 1)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
