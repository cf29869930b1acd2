"""Fine-tuning from another run: what is copied, what stays frozen, resume and bad input."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import TINY, read_metrics, tiny_config, tiny_run
from flax import nnx

import models
import train
from training import finetune, freeze, param_paths
from training.checkpoints import Checkpointer


def _flat(params, batch_stats):
    """{(part, path names as strings...): array}: checkpoints spell list indices as strings."""
    return {(part, *map(str, param_paths.names(kp))): np.asarray(v)
            for part, tree in (("params", params), ("batch_stats", batch_stats))
            for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _checkpoint(workdir):
    """The params and batch stats of a run's latest checkpoint, flat."""
    ckpt = Checkpointer(str(workdir), keep=3)
    restored = ckpt.manager.restore(ckpt.latest_step())
    ckpt.close()
    return _flat(restored["params"], restored["batch_stats"])


def _fresh_head(config):
    model = models.build_model(config.model, seed=config.seed)
    return np.asarray(model.head.kernel[...])


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    """The tiny digits run (20 steps, checkpoints at 10 and 20) to start from (read only)."""
    return tiny_run(tmp_path_factory)[0]


def _finetune_config(source, **overrides):
    return tiny_config(**{"num_steps": 10, "layer_responses": False,
                          "finetune.from_run": str(source), "model.num_classes": 12,
                          "optimizer.lr": 0.01, **overrides})


def test_import_copies_every_parameter_and_statistic_but_the_head(source):
    config = _finetune_config(source)
    model = models.build_model(config.model, seed=config.seed)
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    got = _flat(*finetune.import_source(config, params, stats))
    want = _checkpoint(source)
    assert set(got) == set(want)
    for key, value in got.items():
        if key[1] == "head":
            assert value.shape[-1] == 12  # fresh, with the new class count
        else:
            np.testing.assert_array_equal(value, want[key], err_msg=str(key))
    np.testing.assert_array_equal(got[("params", "head", "kernel")], _fresh_head(config))
    # from_step picks an older checkpoint: the copied values change.
    older = finetune.import_source(_finetune_config(source, **{"finetune.from_step": 10}),
                                   *nnx.split(model, nnx.Param, nnx.BatchStat, ...)[1:3])
    assert not np.array_equal(np.asarray(older[0]["stem"]["conv"]["kernel"][...]),
                              want[("params", "stem", "conv", "kernel")])


@pytest.mark.parametrize("freeze,frozen", [
    ("all", ("stem", "0", "1", "2")),  # a linear classifier on frozen features
    ("stage1", ("stem", "0")),
])
def test_frozen_layers_stay_bit_identical_and_the_rest_trains(tmp_path, source, freeze, frozen,
                                                             capsys):
    config = _finetune_config(source, **{"finetune.freeze": freeze})
    capsys.readouterr()
    train.train_and_evaluate(config, str(tmp_path))
    before, after = _checkpoint(source), _checkpoint(tmp_path)
    # the run says what it loaded and froze: counted from the checkpoint's own tree
    params = {k for k in after if k[0] == "params"}
    loaded = sum(k[1] != "head" for k in params)
    num_frozen = sum((k[1] if k[1] != "stages" else k[2]) in frozen for k in params)
    said = [x for x in capsys.readouterr().out.splitlines() if x.startswith("fine-tuning")]
    assert said == [f"fine-tuning from {source} (checkpoint 20): loaded {loaded} of "
                    f"{len(params)} parameter arrays and the BatchNorm statistics; the "
                    f"classifier head starts fresh; froze {freeze} ({num_frozen} parameter "
                    "arrays; their BatchNorm runs in inference mode)"]
    for key, value in after.items():
        part, top = key[1], (key[1] if key[1] != "stages" else key[2])
        if part == "head":
            continue
        if top in frozen:  # parameters and BatchNorm running statistics alike
            np.testing.assert_array_equal(value, before[key], err_msg=str(key))
        else:
            assert not np.array_equal(value, before[key]), key
    assert not np.array_equal(after[("params", "head", "kernel")], _fresh_head(config))
    assert read_metrics(tmp_path)[-1]["step"] == 10


def test_freeze_levels_name_the_stem_and_the_first_stages():
    paths = [("stem", "conv", "kernel"), ("stages", 0, "blocks", 0, "unit1", "bn", "mean"),
             ("stages", 1, "repeated", "unit2", "conv", "kernel"), ("stages", 2, "blocks", 0),
             ("head", "kernel"), ("final", "bn", "scale")]  # final: pre-activation nets' BN-act
    frozen = {level: [freeze.frozen_predicate(level, 3)(p) for p in paths]
              for level in (None, "none", "stem", "stage1", "stage2", "stage3", "all")}
    assert frozen[None] == frozen["none"] == [False] * 6
    assert frozen["stem"] == [True, False, False, False, False, False]
    assert frozen["stage1"] == [True, True, False, False, False, False]
    assert frozen["stage2"] == [True, True, True, False, False, False]
    assert frozen["stage3"] == frozen["all"] == [True, True, True, True, False, True]


def test_frozen_batchnorm_runs_on_its_running_statistics():
    """freeze='all' in training mode computes what inference mode computes (only the head
    differs between the two, and it has no BatchNorm); without freezing it does not."""
    config = tiny_config()
    model = models.build_model(config.model, seed=0)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    # Running statistics unlike a batch's, so that the two modes differ.
    for path, stat in nnx.iter_graph(model):
        if isinstance(stat, nnx.BatchStat):
            stat[...] = stat[...] + (0.5 if path[-1] == "mean" else 1.0)
    # One compiled program per mode, not one per op; nnx.jit hands BatchNorm's updates back.
    forward = nnx.jit(lambda m, x: m(x))
    model.eval()
    inference = np.asarray(forward(model, x))
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    model.train()
    freeze.freeze_batch_norm(model, "all")
    np.testing.assert_allclose(np.asarray(forward(model, x)), inference, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(nnx.state(model, nnx.BatchStat)),
                    strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # not updated either
    model.train()
    assert np.abs(np.asarray(forward(model, x)) - inference).max() > 1e-2


def test_a_resumed_finetuning_run_does_not_read_its_source_again(tmp_path, source):
    moved = tmp_path / "moved-source"
    shutil.copytree(source, moved)
    workdir = tmp_path / "finetuned"
    train.train_and_evaluate(_finetune_config(moved, num_steps=5), str(workdir))
    shutil.rmtree(moved)  # gone: a resume that re-imported it would fail
    summary = train.train_and_evaluate(_finetune_config(moved, num_steps=10), str(workdir),
                                       allow_config_change=True)
    assert summary["status"] == "finished"
    assert [m["step"] for m in read_metrics(workdir)] == [5, 10]


def _main(tmp_path, *args):
    workdir = tmp_path / "run"
    code = train.main(["--config", "configs/digits.py:resnet-14", "--workdir", str(workdir),
                       *[f"--config.{k}={v}" for k, v in TINY.items()], *args])
    return code, workdir


@pytest.mark.parametrize("args,message", [
    (["--config.finetune.from_run={missing}"], "does not exist"),
    (["--config.finetune.from_run={not_a_run}"], "is not a run directory"),
    (["--config.finetune.from_run={no_checkpoint}"], "has no checkpoint"),
    (["--config.finetune.from_run={source}", "--config.finetune.from_step=7"],
     "from_step 7 is not a checkpoint"),
    (["--config.finetune.from_run={source}", "--config.model.in_channels=3"],
     "trained on 1-channel inputs"),
    (["--config.finetune.from_run={source}", "--config.model.widths=(4,8,32)"],
     "parameter stages/2/blocks/0/unit1/bn/bias has shape (32,) here but (16,)"),
    (["--config.finetune.from_run={source}", "--config.model.depth=20"],
     "parameter stages/0/repeated/unit1/bn/bias has shape (2, 4) here but (1, 4)"),
    (["--config.finetune.from_run={source}", "--config.model.scan_blocks=False"],
     "scan_blocks must match"),
    (["--config.finetune.from_run={source}", "--config.finetune.freeze=stage4"],
     "'stage1'..'stage3' or 'all'"),
    (["--config.finetune.freeze=all"], "need finetune.from_run"),
])
def test_bad_finetuning_input_is_one_error_line(tmp_path, capsys, source, args, message):
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    with open(no_checkpoint / "config.json", "w") as f:
        json.dump({"model": {"depth": 14}}, f)
    paths = {"missing": tmp_path / "missing", "not_a_run": tmp_path, "source": source,
             "no_checkpoint": no_checkpoint}
    code, workdir = _main(tmp_path, *[a.format(**paths) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]
    assert not os.path.exists(workdir)
