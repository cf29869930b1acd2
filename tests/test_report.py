"""Tests of the study report on small synthetic run directories, of its verdict logic, and of
the network names and labels it shows."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_run

import models
from configs import default
from experiments import report
from experiments.figures import plot_fit_gap, plot_step_losses
from experiments.study import Row, build_rows, load_runs
from experiments.verdicts import verdicts


@pytest.fixture
def study(tmp_path):
    s = tmp_path / "study"
    make_run(s, "p20", depth=20, plain=True, train_errors=[0.5, 0.02], test_errors=[0.5, 0.09],
             responses=[1.0, 0.9, 0.8])
    make_run(s, "p56", depth=56, plain=True, train_errors=[0.7, 0.10], test_errors=[0.7, 0.15])
    make_run(s, "r20", depth=20, plain=False, train_errors=[0.4, 0.01], test_errors=[0.4, 0.08],
             responses=[0.5, 0.4, 0.3])
    make_run(s, "r56-s0", depth=56, plain=False, train_errors=[0.3, 0.004],
             test_errors=[0.3, 0.07])
    make_run(s, "r56-s1", depth=56, plain=False, seed=1, train_errors=[0.3, 0.006],
             test_errors=[0.3, 0.05])
    make_run(s, "p110", depth=110, plain=True, train_errors=[0.9], test_errors=[None],
             status="diverged", diverged_at=123)
    make_run(s, "r110", depth=110, plain=False, train_errors=[0.5], test_errors=[None],
             status=None)
    return s


def test_report_writes_figures_tables_and_verdicts(study):
    written = report.write_report(study)
    for key in ("figure_png", "figure_svg", "responses_png", "markdown", "csv"):
        assert Path(written[key]).stat().st_size > 0
    assert Path(written["figure_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(written["csv"]) as f:
        rows = {r["network"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"plain-20", "plain-56", "plain-110", "ResNet-20", "ResNet-56",
                         "ResNet-110"}
    r56 = rows["ResNet-56"]
    assert r56["runs"] == "2"
    assert r56["final train error %"] == "0.50 ± 0.14"  # mean and stdev of 0.4% and 0.6%
    assert r56["final test error %"] == "6.00 ± 1.41"
    assert r56["best test error %"] == "5.00"
    assert r56["paper test error %"] == "6.97" and r56["ours - paper"] == "-0.97"
    assert rows["plain-110"]["status"] == "diverged at step 123"
    assert rows["ResNet-110"]["status"] == "unfinished"
    assert rows["plain-56"]["paper test error %"] == "—"
    md = Path(written["markdown"]).read_text()
    assert "Degradation: plain-56 ends with a higher training error than plain-20" in md
    assert "plain-110 failed to train (diverged at step 123)" in md
    assert "![training and test error](curves.png)" in md
    for name in ("train_loss", "fit_gap"):  # the diagnostics, next to curves.png
        assert f"]({name}.png)" in md
        assert (study / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (study / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def row(depth, plain, train, test=None, status="finished"):
    label = models.spec_from_config({"depth": depth, "plain": plain}).label
    r = Row(label, "cifar10", depth, plain, "")
    r.train_error, r.test_error, r.status = train, test, status
    return r


def test_verdicts_detect_degradation_only_when_the_deeper_plain_net_trains_worse():
    worse = verdicts([row(20, True, 1.0), row(56, True, 12.0)])
    assert worse == ["Degradation: plain-56 ends with a higher training error than plain-20 "
                     "(12.0% vs 1.0%)."]
    within = verdicts([row(20, True, 1.0), row(56, True, 1.3)])
    assert within[0].startswith("No degradation: plain-56 trains as well as plain-20")
    better = verdicts([row(20, True, 1.0), row(56, True, 0.2)])
    assert better[0].startswith("No degradation")


def test_verdicts_on_residual_nets_and_plain_vs_residual():
    lines = verdicts([row(20, False, 1.0), row(56, False, 3.0),
                             row(56, True, 20.0, 25.0), row(56, False, 3.0, 7.0)][:3])
    assert "Residual nets: ResNet-56 trains worse than ResNet-20 (3.0% vs 1.0% training " \
           "error)." in lines
    assert "At depth 56 the residual net beats the plain net: train 3.0% vs 20.0%." in lines
    same = verdicts([row(20, True, 1.0, 8.0), row(20, False, 1.2, 7.0)])
    assert same == ["At depth 20 the residual net matches the plain net: train 1.2% vs 1.0%, "
                    "test 7.0% vs 8.0%."]


def test_a_diverged_net_counts_as_failing_to_train():
    lines = verdicts([row(20, True, 1.0), row(110, True, None,
                                                     status="diverged at step 5")])
    assert lines[0] == "plain-110 failed to train (diverged at step 5)."
    assert lines[1].startswith("Degradation: plain-110") and "100.0% vs 1.0%" in lines[1]


def test_missing_or_empty_study_directory_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    with pytest.raises(ValueError, match="no run directories"):
        report.write_report(tmp_path)
    out = subprocess.run([sys.executable, "-m", "experiments.report", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and len(out.stderr.strip().splitlines()) == 1


def test_diagnostics_plot_what_the_metrics_say(tmp_path):
    """Per-step losses, their spread per log interval, and the train / held-out gap."""
    s = tmp_path / "study"
    losses = [[2.0, 1.0, 1.5], [0.5, 0.7, 0.3]]
    make_run(s, "r20-s0", depth=20, plain=False, train_errors=[0.5, 0.1],
             test_errors=[0.6, 0.3], step_losses=losses, val_errors=[0.55, 0.25])
    make_run(s, "r20-s1", depth=20, plain=False, seed=1, train_errors=[0.3, 0.1],
             test_errors=[0.4, 0.3], step_losses=[[4.0, 3.0, 2.0], [1.5, 0.9, 0.3]],
             val_errors=[0.45, 0.15])
    make_run(s, "p20", depth=20, plain=True, train_errors=[0.5, 0.2, 0.1],
             test_errors=[None, 0.3, 0.2])  # logged before per-step losses existed
    rows = build_rows(load_runs(str(s)))
    paths, plotted = plot_step_losses(rows, str(tmp_path / "loss"))
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "svg"]
    res = plotted["ResNet-20"]
    # Three steps per log line end at steps 100 and 200; seeds averaged step by step.
    assert res["steps"] == [98, 99, 100, 198, 199, 200]
    np.testing.assert_allclose(res["loss"], [3.0, 2.0, 1.75, 1.0, 0.8, 0.3])
    assert res["interval_steps"] == [100, 200]
    np.testing.assert_allclose(res["interval_mean"], [(1.5 + 3.0) / 2, (0.5 + 0.9) / 2])
    np.testing.assert_allclose(res["interval_std"], [
        (np.std(losses[0]) + np.std([4.0, 3.0, 2.0])) / 2,
        (np.std(losses[1]) + np.std([1.5, 0.9, 0.3])) / 2])
    np.testing.assert_allclose(res["interval_min"], [(1.0 + 2.0) / 2, (0.3 + 0.3) / 2])
    np.testing.assert_allclose(res["interval_max"], [(2.0 + 4.0) / 2, (0.7 + 1.5) / 2])
    old = plotted["plain-20"]
    assert old["steps"] == [] and old["interval_mean"] == [1.0, 1.0, 1.0]
    assert old["interval_std"] == [0.0, 0.0, 0.0] and old["interval_max"] == [1.0, 1.0, 1.0]

    _, gaps = plot_fit_gap(rows, str(tmp_path / "gap"))
    res = gaps["ResNet-20"]  # both runs have a validation split: val, not test
    assert res["heldout_name"] == "val" and res["steps"] == [100, 200]
    np.testing.assert_allclose(res["train"], [40.0, 10.0])
    np.testing.assert_allclose(res["heldout"], [50.0, 20.0])
    plain = gaps["plain-20"]  # no validation split: test error, at the steps it was measured
    assert plain["heldout_name"] == "test" and plain["steps"] == [200, 300]
    np.testing.assert_allclose(plain["train"], [20.0, 10.0])
    np.testing.assert_allclose(plain["heldout"], [30.0, 20.0])


NAMES = ["plain-20", "resnet-56", "preact-164", "plain-preact-110", "wrn-28-10", "wrn-40-4",
         "plain-wrn-16-2"]


@pytest.mark.parametrize("name", NAMES)
def test_a_network_name_parses_into_the_config_of_the_network_of_that_name(name):
    config = default.get_config()
    default.apply_network_name(config, name)
    assert models.spec_from_config(config.model).name == name


def test_report_labels_are_the_specs_labels():
    labels = {}
    for name in NAMES:
        config = default.get_config()
        default.apply_network_name(config, name)
        labels[name] = models.spec_from_config(config.model).label
    assert labels == {"plain-20": "plain-20", "resnet-56": "ResNet-56",
                      "preact-164": "pre-act ResNet-164", "plain-preact-110": "pre-act plain-110",
                      "wrn-28-10": "WRN-28-10", "wrn-40-4": "WRN-40-4",
                      "plain-wrn-16-2": "plain WRN-16-2"}
