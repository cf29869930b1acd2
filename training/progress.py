"""What a run shows on the console while it trains: a tqdm bar, or one line per log step.

A terminal gets a live bar; a log file (a sweep's ``train.log``, a batch
job) gets plain lines, one per logged step.
"""

from __future__ import annotations

import sys


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
