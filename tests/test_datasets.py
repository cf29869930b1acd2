"""The embedded digits and the stratified splits, read without importing scikit-learn,
equal what scikit-learn's ``load_digits`` and ``train_test_split`` give (the data every
digits run has trained on)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data import datasets


def sklearn_split(labels, n_out, seed):
    kept, held = train_test_split(np.arange(len(labels)), test_size=n_out, random_state=seed,
                                  stratify=labels)
    return np.sort(kept), np.sort(held)


def test_the_digits_are_scikit_learns_split_as_scikit_learn_splits_them():
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    kept, held = sklearn_split(d.target, datasets.DIGITS_TEST_EXAMPLES, 0)
    train, test, classes = datasets._load_digits()
    assert classes == 10 and len(train.labels) == 1437 and len(test.labels) == 360
    np.testing.assert_array_equal(train.images, images[kept])
    np.testing.assert_array_equal(test.images, images[held])
    np.testing.assert_array_equal(train.labels, d.target[kept])
    np.testing.assert_array_equal(test.labels, d.target[held])


@pytest.mark.parametrize("classes,size", [(10, 1437), (7, 500), (100, 3000)])
def test_stratified_splits_hold_out_what_scikit_learn_holds_out(classes, size):
    labels = np.random.default_rng(classes).integers(0, classes, size)
    for n_out in (classes, 101, 377):
        for seed in range(3):
            ours = datasets._stratified_split(labels, n_out, seed)
            for a, b in zip(ours, sklearn_split(labels, n_out, seed), strict=True):
                np.testing.assert_array_equal(a, b)


def test_a_split_too_small_for_the_classes_is_one_error():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ValueError, match="needs at least 10"):
        datasets._stratified_split(labels, 5, 0)
    with pytest.raises(ValueError, match="single example"):
        datasets._stratified_split(np.array([0, 0, 1]), 1, 0)
