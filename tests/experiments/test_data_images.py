"""Tests for experiments.data.images: digits, TFDS (mocked, offline), the IDX reader, errors."""

import gzip

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits as sklearn_digits

from experiments.data import images
from experiments.data.images import (DATASETS, input_dim, load_image_classification,
                                     num_classes, read_idx)
from experiments.runtime.errors import ConfigError


def _write_idx(path, array, compress=False):
    """Writes `array` as an IDX file (big-endian header and values), optionally gzipped."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def _assert_one_line(error_info, *fragments):
    message = str(error_info.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def no_local_idx(tmp_path, monkeypatch):
    """Makes fashion_mnist ignore any IDX files on this machine, so TFDS is used."""
    empty = tmp_path / "no_idx"
    empty.mkdir()
    monkeypatch.delenv("KF_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setitem(images._IDX_LOCATIONS, "fashion_mnist",
                        ("KF_FASHION_MNIST_DIR", str(empty)))


def _fashion_idx_dir(tmp_path, rng, n_train=20, n_test=6):
    """A directory of synthetic Fashion-MNIST IDX files (some gzipped, some not)."""
    directory = tmp_path / "fashion"
    directory.mkdir()
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for i, (stem, array) in enumerate(arrays.items()):
        compress = i % 2 == 0
        _write_idx(directory / (stem + (".gz" if compress else "")), array, compress)
    return directory, arrays


def test_metadata():
    assert DATASETS == ("digits", "mnist", "fashion_mnist")
    assert [num_classes(n) for n in DATASETS] == [10, 10, 10]
    assert [input_dim(n) for n in DATASETS] == [64, 784, 784]


def test_digits_shapes_ranges_and_split():
    (x_train, y_train), (x_val, y_val) = load_image_classification(
        "digits", validation_fraction=0.2, seed=3)
    assert x_train.dtype == np.float32 and x_val.dtype == np.float32
    assert y_train.dtype == np.int32 and y_val.dtype == np.int32
    assert x_train.shape[1] == x_val.shape[1] == 64
    assert len(x_train) + len(x_val) == 1797
    assert len(x_val) == pytest.approx(0.2 * 1797, abs=10)
    assert 0.0 <= x_train.min() and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10))
    # The two parts are exactly sklearn's images / 16, each image once.
    reference = sklearn_digits()
    ours = np.concatenate([x_train, x_val])
    expected = (reference.data / 16.0).astype(np.float32)
    order_ours = np.lexsort(ours.T)
    order_expected = np.lexsort(expected.T)
    np.testing.assert_array_equal(ours[order_ours], expected[order_expected])
    np.testing.assert_array_equal(np.concatenate([y_train, y_val])[order_ours],
                                  reference.target[order_expected])


def test_digits_deterministic_per_seed_and_caps():
    a = load_image_classification("digits", seed=1)
    b = load_image_classification("digits", seed=1)
    c = load_image_classification("digits", seed=2)
    for part_a, part_b in zip(a, b):
        np.testing.assert_array_equal(part_a[0], part_b[0])
        np.testing.assert_array_equal(part_a[1], part_b[1])
    assert not np.array_equal(a[1][0], c[1][0])

    (x_train, y_train), (x_val, y_val) = load_image_classification(
        "digits", seed=1, max_train=100, max_validation=30)
    assert x_train.shape == (100, 64) and y_train.shape == (100,)
    assert x_val.shape == (30, 64) and y_val.shape == (30,)
    np.testing.assert_array_equal(x_val, a[1][0][:30])
    # The training subset is rows of the full training set.
    full = {row.tobytes() for row in a[0][0]}
    assert all(row.tobytes() in full for row in x_train)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_mocked(name, no_local_idx):
    with tfds.testing.mock_data(num_examples=12):
        raw_train = tfds.as_numpy(tfds.load(name, split="train", as_supervised=True).batch(100))
        raw_x, raw_y = next(iter(raw_train))
        (x_train, y_train), (x_val, y_val) = load_image_classification(name)
        (cx_train, cy_train), (cx_val, cy_val) = load_image_classification(
            name, seed=5, max_train=5, max_validation=3)
        (dx_train, _), _ = load_image_classification(name, seed=5, max_train=5)

    assert x_train.shape == (12, 784) and x_val.shape == (12, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32 and y_val.dtype == np.int32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() > 0.5
    assert 0 <= y_train.min() and y_train.max() < 10
    np.testing.assert_allclose(x_train, raw_x.reshape(12, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, raw_y)

    assert cx_train.shape == (5, 784) and cy_train.shape == (5,)
    assert cx_val.shape == (3, 784) and cy_val.shape == (3,)
    np.testing.assert_array_equal(cx_val, x_val[:3])
    np.testing.assert_array_equal(cx_train, dx_train)  # Same seed, same subset.
    keep = np.sort(np.random.default_rng(5).choice(12, 5, replace=False))
    np.testing.assert_array_equal(cx_train, x_train[keep])
    np.testing.assert_array_equal(cy_train, y_train[keep])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    _write_idx(path, array, compress)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.shape == (3, 4, 5)
    np.testing.assert_array_equal(result, array)


def test_read_idx_corrupt_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good"
    _write_idx(good, array)
    data = good.read_bytes()
    cases = {
        "bad_magic": b"\x01\x02" + data[2:],
        "unknown_type": data[:2] + b"\x42" + data[3:],
        "truncated_data": data[:-1],
        "trailing_data": data + b"\x00",
        "truncated_header": data[:9],
        "empty": b"",
        "bad_gzip": gzip.compress(data)[:-12],
    }
    for case, content in cases.items():
        path = tmp_path / case
        path.write_bytes(content)
        with pytest.raises(ConfigError) as error_info:
            read_idx(path)
        _assert_one_line(error_info, str(path))
    with pytest.raises(ConfigError) as error_info:
        read_idx(tmp_path / "missing")
    _assert_one_line(error_info, "missing")


def test_fashion_mnist_from_idx_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("KF_FASHION_MNIST_DIR", raising=False)
    directory, arrays = _fashion_idx_dir(tmp_path, np.random.default_rng(1))
    (x_train, y_train), (x_val, y_val) = load_image_classification(
        "fashion_mnist", idx_dir=str(directory))
    np.testing.assert_allclose(
        x_train, arrays["train-images-idx3-ubyte"].reshape(20, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(
        x_val, arrays["t10k-images-idx3-ubyte"].reshape(6, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_val, arrays["t10k-labels-idx1-ubyte"])
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32

    # The environment variable selects the same files; caps apply as for TFDS.
    monkeypatch.setenv("KF_FASHION_MNIST_DIR", str(directory))
    (cx_train, _), (cx_val, _) = load_image_classification(
        "fashion_mnist", seed=2, max_train=7, max_validation=2)
    keep = np.sort(np.random.default_rng(2).choice(20, 7, replace=False))
    np.testing.assert_array_equal(cx_train, x_train[keep])
    np.testing.assert_array_equal(cx_val, x_val[:2])


def test_fashion_mnist_default_idx_location_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("KF_FASHION_MNIST_DIR", raising=False)
    directory, arrays = _fashion_idx_dir(tmp_path, np.random.default_rng(4))
    monkeypatch.setitem(images._IDX_LOCATIONS, "fashion_mnist",
                        ("KF_FASHION_MNIST_DIR", str(directory)))
    (_, y_train), _ = load_image_classification("fashion_mnist")
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])


def test_fashion_mnist_bad_idx_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("KF_FASHION_MNIST_DIR", raising=False)
    directory, _ = _fashion_idx_dir(tmp_path, np.random.default_rng(2))
    # A label file that disagrees with its images (replacing the uncompressed one).
    (directory / "t10k-labels-idx1-ubyte").unlink()
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), compress=True)
    with pytest.raises(ConfigError) as error_info:
        load_image_classification("fashion_mnist", idx_dir=str(directory))
    _assert_one_line(error_info, "--dataset=fashion_mnist", "do not match")

    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as error_info:
        load_image_classification("fashion_mnist", idx_dir=str(directory))
    _assert_one_line(error_info, "missing t10k-labels-idx1-ubyte")

    _write_idx(directory / "t10k-labels-idx1-ubyte", np.full(6, 12, np.uint8))
    with pytest.raises(ConfigError) as error_info:
        load_image_classification("fashion_mnist", idx_dir=str(directory))
    _assert_one_line(error_info, "labels outside [0, 10)")


def test_unknown_name_and_bad_arguments():
    for call in (lambda: load_image_classification("cifar10"),
                 lambda: num_classes("imagenet"), lambda: input_dim("")):
        with pytest.raises(ConfigError) as error_info:
            call()
        _assert_one_line(error_info, "unknown --dataset", "digits, mnist, fashion_mnist")
    for kwargs, fragment in [({"max_train": 0}, "--max_train"),
                             ({"max_validation": -3}, "--max_validation"),
                             ({"max_train": 2.5}, "--max_train"),
                             ({"validation_fraction": 1.0}, "--validation_fraction")]:
        with pytest.raises(ConfigError) as error_info:
            load_image_classification("digits", **kwargs)
        _assert_one_line(error_info, fragment)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_missing_data_dir_fails_fast(tmp_path, name, no_local_idx):
    data_dir = tmp_path / "empty_tfds"
    data_dir.mkdir()
    with pytest.raises(ConfigError) as error_info:
        load_image_classification(name, data_dir=str(data_dir))
    _assert_one_line(error_info, f"--dataset={name}", f"--data_dir={data_dir}")
    assert error_info.value.__cause__ is None and error_info.value.__suppress_context__
    assert not any(data_dir.iterdir())  # Nothing was downloaded.
