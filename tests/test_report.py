"""Tests of the study report on small synthetic run directories, of its verdict logic, and of
the network names and labels it shows."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_run

import models
from configs import default, network_arg
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
    assert float(r56["final train error % (mean)"]) == pytest.approx(0.5)  # of 0.4% and 0.6%
    assert float(r56["final train error % (std)"]) == pytest.approx(0.1414, abs=1e-4)
    assert float(r56["final test error % (mean)"]) == pytest.approx(6.0)
    assert float(r56["final test error % (std)"]) == pytest.approx(1.4142, abs=1e-4)
    assert float(r56[report.BEST_MEAN]) == pytest.approx(6.0)  # each seed's best: 7% and 5%
    assert float(r56[report.BEST_MIN]) == pytest.approx(5.0)
    assert r56["paper test error %"] == "6.97" and float(r56["ours - paper"]) == -0.97
    assert rows["plain-110"]["status"] == "diverged at step 123"
    assert rows["ResNet-110"]["status"] == "unfinished"
    assert rows["plain-56"]["paper test error %"] == ""
    md = Path(written["markdown"]).read_text()
    assert "| ResNet-56 | 56 | 1,000 | 2 | 0.50 ± 0.14 | 6.00 ± 1.41 | 6.00 ± 1.41 | 5.00 | " \
           "6.97 | -0.97 | 2 finished |" in md
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


# Digits-sized errors: the test split has 360 images, 10 of them are 2.78%, 11 are 3.06%.
E10, E11, E12 = 10 / 360, 11 / 360, 12 / 360


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure the code under test closes, kept for inspection."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (kept.append(fig), close(fig)))
    return kept


def test_several_finished_seeds_count_as_finished_and_a_diverged_seed_is_named(tmp_path):
    s = tmp_path / "study"
    for seed in (0, 1):
        make_run(s, f"p20-s{seed}", depth=20, plain=True, seed=seed, train_errors=[0.5, 0.01],
                 test_errors=[0.5, 0.08])
    make_run(s, "r20-s0", depth=20, plain=False, train_errors=[0.5, 0.01],
             test_errors=[0.5, 0.07])
    make_run(s, "r20-s1", depth=20, plain=False, seed=1, train_errors=[0.5, 0.9],
             test_errors=[0.5, None], status="diverged", diverged_at=150)
    rows = {r.label: r for r in build_rows(load_runs(str(s)))}
    assert rows["plain-20"].status == "2 finished" and rows["plain-20"].finished
    assert rows["ResNet-20"].status == "1 finished; 1 diverged at step 150"
    assert not rows["ResNet-20"].finished

    _, plotted = report.plot_curves(list(rows.values()), str(tmp_path / "curves"))
    assert plotted["plain-20"]["label"] == "plain-20"  # no "(2 finished)"
    assert not plotted["plain-20"]["failure_marker"]
    assert plotted["ResNet-20"]["label"] == "ResNet-20 (1 finished; 1 diverged at step 150)"
    assert plotted["ResNet-20"]["failure_marker"]
    found = verdicts(list(rows.values()))
    assert "ResNet-20 failed to train (1 finished; 1 diverged at step 150)." in found
    assert not any(v.startswith("plain-20 failed") for v in found)


def test_best_test_error_is_the_mean_of_each_seeds_best_and_says_so(tmp_path):
    s = tmp_path / "study"
    # lr=0.05: seed 0's best is 2.78% (final 3.06%), seed 1's 3.06% (final 3.33%).
    make_run(s, "s0", depth=20, plain=False, train_errors=[0.1, 0.0, 0.0],
             test_errors=[0.1, E10, E11], params=269434)
    make_run(s, "s1", depth=20, plain=False, seed=1, train_errors=[0.1, 0.0, 0.0],
             test_errors=[0.1, E11, E12], params=269434)
    rows = build_rows(load_runs(str(s)))
    assert rows[0].best_test_error == pytest.approx(100 * (E10 + E11) / 2)  # 2.92, not 2.78
    assert rows[0].best_test_error_min == pytest.approx(100 * E10)
    header, _, line = report.markdown_table(rows).splitlines()
    assert header.split(" | ")[6:8] == ["best test error % (mean of each seed's best)",
                                        "best test error % (min over seeds)"]
    assert line == ("| ResNet-20 | 20 | 269,434 | 2 | 0.00 ± 0.00 | 3.19 ± 0.20 | "
                    "2.92 ± 0.20 | 2.78 | 8.75 | -5.56 | 2 finished |")


def test_a_single_seed_table_is_the_single_run_table(tmp_path):
    """One seed per network: the README's columns and numbers, unchanged."""
    s = tmp_path / "study"
    make_run(s, "p20", depth=20, plain=True, train_errors=[0.5, 0.0, 0.0],
             test_errors=[0.5, E10, E11], params=269434)
    make_run(s, "p56", depth=56, plain=True, train_errors=[0.5, 0.3, 0.282],
             test_errors=[0.5, 143 / 360, 0.4], params=852730)
    table = report.markdown_table(build_rows(load_runs(str(s))))
    assert table.splitlines() == [
        "| network | depth | params | runs | final train error % | final test error % | "
        "best test error % | paper test error % | ours - paper | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| plain-20 | 20 | 269,434 | 1 | 0.00 | 3.06 | 2.78 | — | — | finished |",
        "| plain-56 | 56 | 852,730 | 1 | 28.20 | 40.00 | 39.72 | — | — | finished |"]


NUMERIC = [c for c in report.CSV_COLUMNS if c not in ("network", "status")]


def test_results_csv_holds_numbers_or_empty_cells(study):
    written = report.write_report(study)
    with open(written["csv"], newline="") as f:
        header, *lines = list(csv.reader(f))
    assert header == report.CSV_COLUMNS and len(lines) == 6
    cells = 0
    for line in lines:
        for name, cell in zip(header, line, strict=True):
            if name in NUMERIC and cell:
                float(cell)  # raises on "1,000", "—" or "0.50 ± 0.14"
                cells += 1
    assert cells > 40
    by_name = {line[0]: dict(zip(header, line, strict=True)) for line in lines}
    assert by_name["plain-56"]["params"] == "1000"
    assert by_name["plain-56"]["paper test error %"] == ""
    assert by_name["plain-110"]["final train error % (mean)"] == ""  # diverged: no error


def _files(directory):
    return {p for p in directory.rglob("*") if p.is_file()}


def _wrote(text):
    return {Path(line.removeprefix("wrote ")) for line in text.splitlines()
            if line.startswith("wrote ")}


def test_the_wrote_lines_list_every_file_the_report_writes(study):
    before = _files(study)
    text = report.render_text(report.write_report(study))
    listed = _wrote(text)
    assert all(p.is_file() for p in listed)
    assert listed == _files(study) - before
    assert {p.name for p in listed} == {
        "results.md", "results.csv", "curves.png", "curves.svg", "layer_responses.png",
        "layer_responses.svg", "train_loss.png", "train_loss.svg", "fit_gap.png",
        "fit_gap.svg"}
    assert "note:" not in text


def test_a_study_evaluated_once_says_so_and_draws_no_empty_curve(tmp_path):
    s = tmp_path / "study"
    make_run(s, "p20", depth=20, plain=True, train_errors=[0.5, 0.3, 0.2],
             test_errors=[None, None, 0.25])
    make_run(s, "r20", depth=20, plain=False, train_errors=[0.5, 0.2, 0.1],
             test_errors=[None, None, 0.15])
    before = _files(s)
    written = report.write_report(s)
    text = report.render_text(written)
    assert written["notices"] == [report.SHORT_STUDY.format(n=1)]
    assert f"note: {written['notices'][0]}" in text
    md = Path(written["markdown"]).read_text()
    assert f"**Note:** {written['notices'][0]}" in md and "](fit_gap.png)" not in md
    assert not (s / "fit_gap.png").exists() and not (s / "fit_gap.svg").exists()
    assert _wrote(text) == _files(s) - before
    _, plotted = report.plot_curves(build_rows(load_runs(str(s))), str(tmp_path / "curves"))
    for label, test in (("plain-20", 25.0), ("ResNet-20", 15.0)):
        assert plotted[label]["test_drawn"] == "point"  # one point, not an empty line
        assert plotted[label]["test_steps"] == [300]
        assert plotted[label]["test"] == pytest.approx([test])


def _assert_legends_outside_the_axes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    canvas = FigureCanvasAgg(fig)  # pyplot took the figure's own canvas away on closing
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    page = fig.bbox.padded(1)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer))


def test_legends_cover_no_curve(tmp_path, figures):
    """The init study's zeros net runs along the top of the axes, where the legend was."""
    s = tmp_path / "study"
    for name, final in (("he", 0.02), ("small", 0.1), ("xavier", 0.01), ("zeros", 0.9)):
        make_run(s, name, depth=20, plain=True, train_errors=[0.9, 0.5, final],
                 test_errors=[0.9, 0.5, final], step_losses=[[2.0, 1.0]] * 3,
                 responses=[1.0, 0.9])
        config = json.loads((s / name / "config.json").read_text())
        config["model"]["init"] = name
        (s / name / "config.json").write_text(json.dumps(config))
    report.write_report(s)
    assert len(figures) == 4  # curves, layer responses, training loss, fit gap
    for fig in figures:
        _assert_legends_outside_the_axes(fig)


def test_overlapping_layer_responses_stay_distinguishable(tmp_path):
    s = tmp_path / "study"
    same = [1.0, 0.98, 1.01]  # plain-20 and ResNet-20 on top of each other
    make_run(s, "p20", depth=20, plain=True, train_errors=[0.1], test_errors=[0.1],
             responses=same)
    make_run(s, "r20", depth=20, plain=False, train_errors=[0.1], test_errors=[0.1],
             responses=same)
    make_run(s, "p56", depth=56, plain=True, train_errors=[0.1], test_errors=[0.1],
             responses=[3.0, 2.0, 1.0])
    make_run(s, "r56", depth=56, plain=False, train_errors=[0.1], test_errors=[0.1])
    _, plotted = report.plot_responses(build_rows(load_runs(str(s))), str(tmp_path / "r"))
    assert set(plotted) == {"plain-20", "ResNet-20", "plain-56"}  # ResNet-56 has none
    styles = [p["style"] for p in plotted.values()]
    for key in ("color", "marker"):
        assert len({str(st[key]) for st in styles}) == 3
    p20, r20 = plotted["plain-20"]["style"], plotted["ResNet-20"]["style"]
    assert p20["linestyle"] != r20["linestyle"]
    assert p20["markerfacecolor"] == "none" and r20["markerfacecolor"] != "none"


NAMES = ["plain-20", "resnet-56", "preact-164", "plain-preact-110", "wrn-28-10", "wrn-40-4",
         "plain-wrn-16-2"]


@pytest.mark.parametrize("name", NAMES)
def test_a_network_name_parses_into_the_config_of_the_network_of_that_name(name):
    config = default.get_config()
    network_arg.apply_network_name(config, name)
    assert models.spec_from_config(config.model).name == name


def test_report_labels_are_the_specs_labels():
    labels = {}
    for name in NAMES:
        config = default.get_config()
        network_arg.apply_network_name(config, name)
        labels[name] = models.spec_from_config(config.model).label
    assert labels == {"plain-20": "plain-20", "resnet-56": "ResNet-56",
                      "preact-164": "pre-act ResNet-164", "plain-preact-110": "pre-act plain-110",
                      "wrn-28-10": "WRN-28-10", "wrn-40-4": "WRN-40-4",
                      "plain-wrn-16-2": "plain WRN-16-2"}
