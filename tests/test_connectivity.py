"""Tests of the connectivity study (configs/connectivity.py): its runs and recipes, its
verdicts and figures, and the complexity chart."""

import json

import pytest

import models
from experiments import complexity, report, sweep
from experiments.study import build_rows, load_runs
from experiments.verdicts import pattern_verdicts
from training import command_line, schedule

STUDY = "configs/connectivity.py"


def _configs(arg=None):
    path = STUDY + (f":{arg}" if arg else "")
    return [command_line.load_config(path, overrides) for overrides in sweep.expand(path, [])]


def _name(config):
    return models.spec_from_config(config.model).name


def test_the_digits_study_trains_each_pattern_at_two_depths():
    configs = _configs()
    assert [_name(c) for c in configs] == [
        "plain-20", "plain-56", "resnet-20", "resnet-56", "densenet-bc-22-12",
        "densenet-bc-58-12", "fractal-24", "fractal-48"]
    patterns = {models.spec_from_config(c.model).connectivity for c in configs}
    assert patterns == {"plain", "residual", "dense", "fractal"}
    assert {(c.dataset, c.num_steps, c.batch_size) for c in configs} == {("digits", 600, 128)}
    for c in configs:
        models.validate_config(c.model)
    names = [_name(c) for c in _configs("digits,resnext,preact,seeds=2")]
    assert len(names) == 24 and names[8:12] == ["resnext-20-8x2d", "resnext-56-8x2d",
                                                "preact-20", "preact-56"]


def test_the_cifar10_study_uses_each_papers_recipe():
    configs = {_name(c): c for c in _configs("cifar10,resnext")}
    assert set(configs) >= {"plain-110", "resnet-110", "densenet-40-12", "densenet-bc-100-12",
                            "fractal-20", "fractal-40", "resnext-29-8x64d", "resnext-29-16x64d"}
    dense = configs["densenet-bc-100-12"]
    sched = schedule.derive_schedule(dense, 50_000)
    assert (dense.batch_size, dense.optimizer.nesterov, sched.steps_per_epoch) == (64, True, 781)
    assert sched.total_steps == 300 * 781
    assert [b / 781 for b in sched.boundaries] == [150, 225]
    fractal = configs["fractal-20"]
    assert (fractal.optimizer.lr, fractal.model.drop_path, fractal.model.global_drop_path,
            fractal.model.init) == (0.02, 0.15, 0.5, "xavier")
    sched = schedule.derive_schedule(fractal, 50_000)
    assert [round(b / 500) for b in sched.boundaries] == [200, 300, 350, 375]
    assert configs["resnext-29-8x64d"].optimizer.weight_decay == 5e-4
    assert configs["resnet-110"].schedule.warmup_until_error == 0.8


def test_a_bad_study_or_option_is_a_one_line_error():
    for arg in ("mnist", "digits,wide", "digits,seeds=0"):
        with pytest.raises(ValueError, match="unknown study") as e:
            sweep.expand(f"{STUDY}:{arg}", [])
        assert "\n" not in str(e.value)


def _run(study, name, model, train_errors, test_error, params=1000):
    run = study / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"dataset": "digits", "seed": 0, "model": {"num_classes": 10, "in_channels": 1,
                                                   "plain": False, **model}}))
    lines = [{"step": 100 * (i + 1), "train_error": e, "train_loss": 1.0,
              "test_error": test_error} for i, e in enumerate(train_errors)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "summary.json").write_text(json.dumps(
        {"status": "finished", "params": params, "final_train_error": train_errors[-1],
         "final_test_error": test_error, "best_test_error": test_error}))


@pytest.fixture
def zoo_study(tmp_path):
    study = tmp_path / "study"
    fractal = {"family": "fractal", "widths": [16, 32, 64]}
    for name, model, train, test in [
        ("p20", {"depth": 20, "plain": True}, [0.3, 0.0], 0.03),
        ("p56", {"depth": 56, "plain": True}, [0.6, 0.28], 0.40),
        ("r20", {"depth": 20}, [0.2, 0.0], 0.02),
        ("r56", {"depth": 56}, [0.2, 0.0], 0.02),
        ("d22", {"family": "densenet", "depth": 22, "block": "bottleneck"}, [0.2, 0.0], 0.02),
        ("d58", {"family": "densenet", "depth": 58, "block": "bottleneck"}, [0.2, 0.001],
         0.03),
        ("f24", {**fractal, "depth": 24}, [0.2, 0.0], 0.02),
        ("f48", {**fractal, "depth": 48}, [0.4, 0.12], 0.2),
    ]:
        _run(study, name, model, train, test)
    return study


def test_pattern_verdicts_say_which_families_degrade_with_depth(zoo_study):
    rows = build_rows(load_runs(zoo_study))
    assert {r.label: r.pattern for r in rows}["DenseNet-BC-22 (k=12)"] == "dense"
    lines = pattern_verdicts(rows)
    assert lines[-1] == ("Degrade with depth: plain nets, FractalNet. Do not: residual nets, "
                         "DenseNet.")
    assert ("FractalNet: FractalNet-48 (C=5) ends at 12.0% training error against 0.0% for "
            "FractalNet-24 (C=4): degrades with depth.") in lines
    # Studies of plain and residual nets only keep their verdicts as they were.
    assert pattern_verdicts([r for r in rows if r.pattern in ("plain", "residual")]) == []


def test_the_complexity_chart_counts_each_net_at_the_studys_input(zoo_study, tmp_path):
    """The report of a study of patterns draws it (``report._zoo_study``); the digits study's
    report, committed under docs/, is the integration run (its figures take seconds each)."""
    from experiments.figures import PATTERNS, _panel

    rows = build_rows(load_runs(zoo_study))
    assert report._zoo_study(rows)
    assert not report._zoo_study([r for r in rows if r.pattern in ("plain", "residual")])
    assert [p for p in PATTERNS if any(_panel(r) == p for r in rows)] == [
        "plain", "residual", "dense", "fractal"]  # curves.png: one panel per pattern
    chosen = [r for r in rows if r.label in ("DenseNet-BC-58 (k=12)", "FractalNet-48 (C=5)")]
    points = {p["label"]: p for p in complexity.study_points(chosen)}
    # Counted at the study's input, 8x8x1.
    assert points["FractalNet-48 (C=5)"]["params"] == 1_381_498
    assert points["FractalNet-48 (C=5)"]["macs"] == 12_285_568
    assert points["DenseNet-BC-58 (k=12)"]["params"] == 314_038
    assert points["FractalNet-48 (C=5)"]["accuracy"] == pytest.approx(80.0)
    vgg = {"label": "VGG-16", "pattern": "plain", "params": 138_357_544,
           "macs": 15_470_264_320, "accuracy": 71.592}
    files = complexity.plot_complexity(list(points.values()), [vgg], str(tmp_path / "c"),
                                       "digits")
    assert [f.rsplit(".", 1)[1] for f in files] == ["png", "svg"]
