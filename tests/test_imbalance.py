"""Tests of class imbalance: the subset, re-sampling, re-weighting and per-class test error."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, tiny_config
from flax import nnx

import train
from data import datasets, sampling, statistics
from training import command_line, steps

DIGITS_TRAIN_COUNTS = [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]


def test_the_imbalanced_subset_has_the_expected_counts_and_is_deterministic():
    balanced = datasets.load_in_memory(tiny_config())
    assert np.bincount(balanced.train.labels).tolist() == DIGITS_TRAIN_COUNTS
    c = tiny_config(**{"imbalance.classes": "(3, 0)", "imbalance.keep_fraction": 0.1})
    data = datasets.load_in_memory(c)
    # round(0.1 * 142) = 14 of class 0, round(0.1 * 146) = 15 of class 3, the rest untouched.
    expected = [14, 146, 142, 15, 145, 145, 145, 143, 139, 144]
    assert np.bincount(data.train.labels).tolist() == expected
    again = datasets.load_in_memory(c)
    np.testing.assert_array_equal(again.train.images, data.train.images)
    np.testing.assert_array_equal(again.train.labels, data.train.labels)
    # A subset of the balanced split (each kept image is one of its class's images) ...
    rows = {(int(y), img.tobytes()) for img, y in zip(balanced.train.images,
                                                       balanced.train.labels, strict=True)}
    assert all((int(y), img.tobytes()) in rows
               for img, y in zip(data.train.images, data.train.labels, strict=True))
    # ... whose test split and mean image are those of the data actually trained on.
    np.testing.assert_array_equal(data.test.labels, balanced.test.labels)
    np.testing.assert_allclose(data.mean_image, data.train.images.mean(0) / 255.0, atol=1e-6)
    other = datasets.load_in_memory(
        tiny_config(**{"imbalance.classes": "(3, 0)", "imbalance.keep_fraction": 0.1,
                       "data_seed": 1}))
    assert np.bincount(other.train.labels).tolist() == expected
    assert not np.array_equal(other.train.images, data.train.images)


def test_validation_examples_are_held_out_before_the_training_split_is_thinned():
    c = tiny_config(val_examples=100, **{"imbalance.classes": "(1,)",
                                         "imbalance.keep_fraction": 0.5})
    data = datasets.load_in_memory(c)
    plain = datasets.load_in_memory(tiny_config(val_examples=100))
    np.testing.assert_array_equal(data.val.labels, plain.val.labels)  # val stays balanced
    n1 = int((plain.train.labels == 1).sum())
    assert int((data.train.labels == 1).sum()) == round(0.5 * n1)


def test_inverse_frequency_weights():
    w = statistics.inverse_frequency_weights(np.array([1, 3, 0]))
    # N = 4 examples, K = 2 classes present: w_c = 4 / (2 n_c); an absent class weighs 0.
    np.testing.assert_allclose(w, [2.0, 2.0 / 3.0, 0.0], rtol=1e-6)


def test_the_reweighted_loss_equals_a_hand_computation():
    c = tiny_config()
    counts = np.array([10, 40, 20, 30, 10, 10, 10, 10, 10, 50])
    weights = statistics.inverse_frequency_weights(counts)
    state = steps.create_train_state(c)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32)
    y = jnp.asarray([0, 1, 1, 3, 9, 9, 2, 0], jnp.int32)
    batch = {"image": x, "label": y}
    # Each a compiled program, not op by op.
    loss, _ = jax.jit(functools.partial(steps.loss_fn, config=c, class_weights=weights))(
        state.params, state, batch, jax.random.key(0))

    model = state.model(train=True)
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, x), np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    nll = -log_p[np.arange(8), np.asarray(y)]
    w = counts.sum() / (10 * counts)  # N / (K n_c)
    expected = np.mean(w[np.asarray(y)] * nll)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    unweighted, _ = jax.jit(functools.partial(steps.loss_fn, config=c))(
        state.params, state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(unweighted), nll.mean(), rtol=1e-5)
    assert abs(expected - nll.mean()) > 1e-2  # the weights matter on this batch


def test_resampled_batches_are_balanced_over_many_steps():
    c = tiny_config(**{"imbalance.classes": "(0, 1, 2, 3, 4)", "imbalance.keep_fraction": 0.05})
    labels = datasets.load_in_memory(c).train.labels
    counts = np.bincount(labels)
    assert counts[:5].tolist() == [7, 7, 7, 7, 7]  # 5% of ~145
    index = sampling.ClassIndex.from_labels(labels)
    device_index = {k: jnp.asarray(v) for k, v in vars(index).items()}
    key = jax.random.key(0)
    sample = jax.jit(lambda s: sampling.balanced_batch_indices(key, s, device_index, 32))
    idx = np.concatenate([np.asarray(sample(s)) for s in range(300)])  # 9600 draws
    seen = np.bincount(labels[idx], minlength=10)
    # Uniform over classes: 960 each, binomial std ~29; rare classes as often as common ones.
    assert np.all(np.abs(seen - 960) < 150), seen
    assert len(np.unique(idx[labels[idx] == 0])) == 7  # every rare example gets drawn
    np.testing.assert_array_equal(np.asarray(sample(5)), np.asarray(sample(5)))  # (seed, step)
    plain = np.concatenate([np.asarray(sampling.batch_indices(key, s, len(labels), 32))
                            for s in range(30)])
    assert np.bincount(labels[plain], minlength=10)[:5].sum() < 0.1 * len(plain)


def _first_losses(tmp_path, name, counter):
    c = tiny_config(num_steps=4, log_every_steps=2, eval_every_steps=4,
                    checkpoint_every_steps=4, layer_responses=False,
                    **{"imbalance.classes": "(0, 1, 2, 3, 4)",
                       "imbalance.keep_fraction": 0.05, "imbalance.counter": counter})
    summary = train.train_and_evaluate(c, str(tmp_path / name))
    return summary, read_metrics(tmp_path / name)


def test_counter_measures_change_training_and_per_class_errors_add_up(tmp_path):
    none, lines = _first_losses(tmp_path, "none", "none")
    resample, lines_r = _first_losses(tmp_path, "resample", "resample")
    reweight, lines_w = _first_losses(tmp_path, "reweight", "reweight")
    first = [m[0]["train_losses"][0] for m in (lines, lines_r, lines_w)]
    assert len(set(first)) == 3, first  # other batches (resample), other loss (reweight)
    test_counts = np.bincount(datasets.load_in_memory(tiny_config()).test.labels)
    for summary in (none, resample, reweight):
        per_class = np.array(summary["test_error_per_class"])
        assert per_class.shape == (10,) and np.all((per_class >= 0) & (per_class <= 1))
        # Whole numbers of wrong examples per class ...
        np.testing.assert_allclose(per_class * test_counts, np.round(per_class * test_counts),
                                   atol=1e-9)
        # ... that add up to the overall test error.
        np.testing.assert_allclose((per_class * test_counts).sum() / test_counts.sum(),
                                   summary["final_test_error"], rtol=1e-12)
    assert lines[-1]["test_error_per_class"] == none["test_error_per_class"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.imbalance.classes=(0, 10)"], "distinct class ids in [0, 10)"),
        (["--config.imbalance.classes=(1, 1)"], "distinct class ids"),
        (["--config.imbalance.classes=(1,)", "--config.imbalance.keep_fraction=0"],
         "keep_fraction must be in (0, 1]"),
        (["--config.imbalance.counter=oversample"], "none, resample, reweight"),
    ],
)
def test_bad_imbalance_settings_are_one_error_line(tmp_path, capsys, args, message):
    workdir = tmp_path / "run"
    code = train.main(["--config", "configs/digits.py:resnet-20", "--workdir", str(workdir),
                       *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not workdir.exists()


def test_imbalance_on_a_streamed_dataset_is_refused():
    c = command_line.load_config("configs/imagenet.py:resnet-18",
                                   {"imbalance.counter": "reweight"})
    with pytest.raises(ValueError, match="in-memory datasets only"):
        train.validate_config(c, None)
