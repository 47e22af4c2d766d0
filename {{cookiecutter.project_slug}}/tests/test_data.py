import numpy as np
import pytest

from {{ cookiecutter.package_name }} import data


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory):
    return data.write_demo_dataset(tmp_path_factory.mktemp("raw") / "digits.csv")


def test_demo_dataset_is_the_digits(demo_csv):
    features, labels = data.load_csv(demo_csv)
    assert features.shape == (1797, 64)
    assert sorted(np.unique(labels)) == list(range(10))
    assert features.min() == 0 and features.max() == 16


def test_load_csv_names_a_missing_label_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="last column must be 'label'"):
        data.load_csv(bad)


def test_split_is_stratified_scaled_and_reproducible(demo_csv, tmp_path):
    features, labels = data.load_csv(demo_csv)
    first = data.split(features, labels, test_fraction=0.2, seed=1)
    second = data.split(features, labels, test_fraction=0.2, seed=1)
    x_train, y_train = first["train"]
    x_test, y_test = first["test"]
    assert len(y_test) == 360 and len(y_train) == 1437
    assert np.array_equal(y_test, second["test"][1])
    assert x_train.max() == 1.0
    counts = np.bincount(y_test) / len(y_test)
    assert np.allclose(counts, np.bincount(labels) / len(labels), atol=0.01)
    data.save_splits(first, tmp_path)
    loaded_x, loaded_y = data.load_split(tmp_path / "test.npz")
    assert np.array_equal(loaded_y, y_test) and loaded_x.dtype == np.float32
    assert data.describe(first) == {"n_train": 1437, "n_test": 360, "n_features": 64, "n_classes": 10}


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_split_rejects_bad_fraction(demo_csv, fraction):
    features, labels = data.load_csv(demo_csv)
    with pytest.raises(ValueError, match=f"got {fraction}"):
        data.split(features, labels, test_fraction=fraction, seed=0)
