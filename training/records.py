"""What a run writes as it trains: its metrics line at each log step, its files at the end.

The training loop (``training.loop``) calls these for every run, alone or in
a pack, so a run's ``metrics.jsonl``, ``layer_responses.json`` and
``summary.json`` read the same whichever way it trained (``experiments.report``
and the other readers never need to know). A run that ends (finished or
diverged) also gets its TensorBoard HParams session (``write_hparams``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

import models
from training import exits, measure, run_dir, schedule, steps, tb_events


def train_line(config: ml_collections.ConfigDict, sched: schedule.Schedule, step: int,
               sums: dict[str, Any], *, warm: Any, plateau_scale: Any, seconds: float,
               elapsed_s: float) -> dict[str, Any]:
    """The metrics line of log step ``step``: a chunk's training loss and error, LR, speed.

    ``sums`` is the run's chunk sums on the host (``dispatch.read_chunk_sums``),
    ``warm`` and ``plateau_scale`` its schedule state after the chunk, ``seconds``
    the chunk's wall time and ``elapsed_s`` the run's training time so far.
    """
    count = sums["steps"]
    return {
        "step": step,
        "epoch": round(step / sched.steps_per_epoch, 3),
        "lr": float(schedule.learning_rate(config, sched, step - 1, warm, plateau_scale)),
        "train_loss": sums["loss"] / count,
        "train_losses": sums["losses"],  # each step's loss (its spread: gradient noise)
        "train_error": sums["error"] / count,
        "images_per_sec": count * config.batch_size / max(seconds, 1e-9),
        "elapsed_s": elapsed_s,
    }


def is_eval_step(config: ml_collections.ConfigDict, step: int, total_steps: int) -> bool:
    return step % config.eval_every_steps == 0 or step == total_steps


def evaluation(config: ml_collections.ConfigDict, feed: Any, state: steps.TrainState
               ) -> dict[str, Any]:
    """The evaluation entries of a metrics line: each split's errors, and dead units if asked."""
    out = measure.evaluate(feed, state)
    if config.dead_units and config.model.activation in models.RECTIFIERS:
        out["dead_units"] = measure.dead_units(feed, state)
    return out


def next_plateau(config: ml_collections.ConfigDict, plateau: schedule.PlateauState,
                 line: dict[str, Any]) -> schedule.PlateauState | None:
    """The 'plateau' schedule's state after this evaluation; None for other schedules.

    Called before the step's checkpoint, which must hold it.
    """
    if config.schedule.name != "plateau":
        return None
    return schedule.plateau_step(config, plateau, line["val_error"])


def finish(config: ml_collections.ConfigDict, feed: Any, state: steps.TrainState,
           run: run_dir.RunDir, *, num_params: int, total_steps: int,
           last_checkpoint: Callable[[], int | None]) -> dict[str, Any]:
    """Writes a finished run's layer responses (if asked) and ``summary.json``; returns it."""
    spec = models.spec_from_config(config.model)
    if config.layer_responses:
        stds = measure.layer_response_stds(feed, state)
        stages = [s for s, n in enumerate(spec.stage_sizes) for _ in range(n)]
        with exits.writing("layer responses", total_steps, last_checkpoint):
            run.write_json("layer_responses.json", {"blocks": [
                {"index": i, "stage": stages[i], "std": float(v)} for i, v in enumerate(stds)]})
    summary = run_dir.summarize(run.metrics.read(), status="finished", name=spec.name,
                                params=num_params, steps=total_steps)
    if run.history_lost_before is not None:  # metrics.jsonl was gone when it resumed
        summary["history"] = (f"partial: metrics.jsonl was missing when the run resumed at "
                              f"step {run.history_lost_before}; the lines before are lost and "
                              "wall_time_s and best_test_error cover the rest only")
    write_hparams(config, run, summary, total_steps, last_checkpoint)  # before the summary:
    with exits.writing("summary", total_steps, last_checkpoint):  # summary.json means done
        run.write_json("summary.json", summary)
    return summary


def write_hparams(config: ml_collections.ConfigDict, run: run_dir.RunDir, summary: dict,
                  step: int, last_checkpoint: Callable[[], int | None]) -> None:
    """The run's TensorBoard HParams session: its settings, status and errors (``tb_events``)."""
    if run.is_writer:
        with exits.writing("TensorBoard HParams summary", step, last_checkpoint):
            tb_events.write_hparams(run.workdir, step, tb_events.hparams_of(config.to_dict()),
                                    summary, summary.get("status", "unknown"))
