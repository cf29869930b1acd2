"""Tests of ensembles of runs (experiments/ensemble.py) on two tiny digits runs."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import copy_run, load_json, read_metrics, tiny_config, tiny_run

import train
from data import augment, datasets
from data.device import replicate
from experiments import ensemble
from training import parallel, steps
from training.checkpoints import Checkpointer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A residual and a plain net of other widths and seed, checkpoints at steps 10 and 20."""
    root = tmp_path_factory.mktemp("runs")
    a, b = copy_run(tiny_run(tmp_path_factory)[0], root / "resnet"), root / "plain"
    train.train_and_evaluate(tiny_config("configs/digits.py:plain-14", seed=1,
                                         layer_responses=False,
                                         **{"model.widths": "(4,4,8)"}), str(b))
    return a, b


def independent_softmax(run_dir, step):
    """The member's softmax on the whole test set in one eager call, without the eval scan."""
    config = ensemble.config_from_json(load_json(run_dir / "config.json"))
    data = datasets.load_in_memory(config)
    like = replicate(steps.create_train_state(config), parallel.make_mesh())
    model = Checkpointer(run_dir, 3).restore(step, like).model()
    x = augment.normalize(data.test.images, data.mean_image)
    logits = np.asarray(model(x), np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), data.test.labels


def run_main(capsys, *args):
    code = ensemble.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_ensemble_error_is_that_of_the_mean_softmax(runs, tmp_path, capsys):
    a, b = runs
    out_file = tmp_path / "ens.json"
    code, out, err = run_main(capsys, a, b, "--out", out_file)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == load_json(out_file)  # --out is honoured
    assert out.splitlines()[-2] == f"written to {out_file}"
    assert "ensemble" in out.splitlines()[-4] and "2 members" in out.splitlines()[-4]
    (pa, labels), (pb, _) = independent_softmax(a, 20), independent_softmax(b, 20)
    mean = (pa + pb) / 2
    assert result["num_examples"] == len(labels) == 360
    assert result["ensemble"]["wrong"] == int((mean.argmax(1) != labels).sum())
    assert result["ensemble"]["error"] == pytest.approx(np.mean(mean.argmax(1) != labels))
    nll = -np.log(mean[np.arange(360), labels]).mean()
    assert result["ensemble"]["loss"] == pytest.approx(nll, rel=1e-4)
    for member, run_dir, probs in zip(result["members"], runs, (pa, pb), strict=True):
        summary = load_json(run_dir / "summary.json")
        assert member["step"] == 20 and member["name"] == summary["name"]
        assert member["error"] == pytest.approx(summary["final_test_error"], rel=1e-12)
        assert member["wrong"] == round(summary["final_test_error"] * 360)
        assert member["wrong"] == int((probs.argmax(1) != labels).sum())
    assert [m["name"] for m in result["members"]] == ["resnet-14", "plain-14"]
    # Two different nets: the ensemble is not just a copy of one member.
    assert not np.array_equal(mean.argmax(1), pa.argmax(1))


def _files(*dirs):
    return {p: os.path.getmtime(p) for d in dirs for p in d.rglob("*")}


def test_checkpoints_of_one_run_and_the_default_result_file(runs, capsys):
    a, b = runs
    before = _files(a, b)
    code, out, err = run_main(capsys, a, "--checkpoints", "all")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert [m["step"] for m in result["members"]] == [10, 20]
    logged = {m["step"]: m["test_error"] for m in read_metrics(a) if "test_error" in m}
    for member in result["members"]:
        assert member["error"] == pytest.approx(logged[member["step"]], rel=1e-12)
    # Default: beside the run directories (their common parent), named after what was ensembled.
    default = a.parent / "ensemble-resnet@all.json"
    assert load_json(default) == result
    assert out.splitlines()[-2] == f"written to {default}"
    code, out, _ = run_main(capsys, a, b, "--checkpoints", "10")
    result = json.loads(out.splitlines()[-1])
    assert code == 0 and [m["step"] for m in result["members"]] == [10, 10]
    assert load_json(a.parent / "ensemble-resnet+plain@10.json") == result
    assert _files(a, b) == before  # nothing written inside a member


def test_the_result_file_name_and_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "runs" / "c10"
    for name in ("depth=20", "depth=56", "sub/depth=110"):
        (study / name).mkdir(parents=True)
    out = ensemble.output_path(None, ["runs/c10/depth=20", "runs/c10/depth=56"])
    assert out == os.path.join("runs", "c10", "ensemble-depth=20+depth=56.json")
    # Never inside a member, even when one run directory holds another.
    out = ensemble.output_path(None, [str(study / "depth=20"), str(study / "depth=20" / "x")])
    assert out == str(study / "ensemble-depth=20+x.json")
    out = ensemble.output_path(None, ["runs/c10/depth=20", "runs/c10/sub/depth=110"], [400, 600],
                               "val")
    assert out == os.path.join("runs", "c10", "ensemble-depth=20+depth=110@400,600-val.json")
    # --out: a file, or a directory that gets the default name.
    assert ensemble.output_path("ens.json", ["runs/c10/depth=20"]) == "ens.json"
    assert ensemble.output_path("runs", ["runs/c10/depth=20"], "all") == os.path.join(
        "runs", "ensemble-depth=20@all.json")
    # Many members: a name a file system takes.
    many = [f"runs/c10/depth=56,plain=False,seed={i}" for i in range(20)]
    name = os.path.basename(ensemble.output_path(None, many))
    assert len(name) <= ensemble.MAX_NAME and name.startswith("ensemble-depth=56,plain=False,"
                                                                "seed=0+19-more-")
    assert name != os.path.basename(ensemble.output_path(None, many[:-1] + ["runs/c10/other"]))


def _copy_with(src, dst, **changes):
    shutil.copytree(src, dst)
    config = load_json(dst / "config.json")
    for key, value in changes.items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bad_input_is_one_error_line_and_exit_code_2(runs, tmp_path, capsys):
    a, b = runs
    cases = [
        ([_copy_with(b, tmp_path / "c10", dataset="cifar10")], "must share the dataset"),
        ([_copy_with(b, tmp_path / "k5", **{"model.num_classes": 5})], "model.num_classes"),
        (["--checkpoints", "15"], "no checkpoint at step 15"),
        (["--checkpoints", "last"], "--checkpoints must be latest, all or steps"),
        (["--split", "train"], "--split must be one of test, val"),
        (["--split", "val"], "val_examples > 0"),
        ([tmp_path], "is not a run directory"),
        ([a], "given twice"),
        (["--out", tmp_path / "missing" / "ens.json"], f"directory {tmp_path / 'missing'} does "
                                                       "not exist"),
        (["--out", f"{tmp_path / 'missing'}{os.sep}"], "does not exist"),
    ]
    for extra, message in cases:
        code, out, err = run_main(capsys, a, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (extra, err)
        assert message in lines[0], (message, lines[0])
    assert not (tmp_path / "missing").exists()
    streamed = _copy_with(a, tmp_path / "inet", dataset="imagenet2012",
                          normalize="channel_standardize")
    code, _, err = run_main(capsys, streamed)
    assert code == 2 and "streamed datasets (imagenet2012) are not supported" in err


def test_config_from_json_restores_tuples_and_fills_missing_keys():
    c = tiny_config()
    saved = json.loads(json.dumps(c.to_dict()))
    del saved["imbalance"]  # a run saved before the key existed
    back = ensemble.config_from_json(saved)
    assert back.model.widths == (4, 8, 16) and back.imbalance.counter == "none"
    assert back.to_dict() == c.to_dict()
