"""What a run shows on the console: what it is doing, then a tqdm bar or one line per log step.

Before the first step a run says what it is doing (loading data, resuming,
compiling), since start-up and compilation take a while; ``say`` prints
those lines. While it trains, a terminal gets a live bar; a log file (a
sweep's ``train.log``, a batch job) gets plain lines, one per logged step
(``step N/M ...``, which the sweep launcher reads for its own progress).
Everything goes to stdout (stderr is for warnings and errors), from process 0.
"""

from __future__ import annotations

import sys

import jax


def say(text: str) -> None:
    """One status line on stdout, from the first process only."""
    if jax.process_index() == 0:
        print(text, flush=True)


class Progress:
    """A tqdm bar on a terminal; plain log lines (one per logged step) otherwise."""

    def __init__(self, total: int, initial: int, log_every: int):
        self.tty = sys.stdout.isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self.total = total

    def update(self, line: dict) -> None:
        shown = {"loss": f"{line['train_loss']:.3f}", "err": f"{line['train_error']:.3f}",
                 "img/s": f"{line['images_per_sec']:.0f}"}
        if "test_error" in line:
            shown["test_err"] = f"{line['test_error']:.4f}"
        if self.bar is not None:
            self.bar.update(line["step"] - self.bar.n)
            self.bar.set_postfix(shown, refresh=True)
        else:
            print(f"step {line['step']}/{self.total} " + " ".join(f"{k}={v}" for k, v in
                                                                shown.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
