"""Image-classification data behind `--dataset`: digits (offline), MNIST and Fashion-MNIST.

Every source returns the same thing, ready for a dense model:

    x[i] = pixels[i].reshape(-1) / max_pixel  in [0, 1], float32, shape (features,)
    y[i] = class index in [0, num_classes),    int32

Sources, in order of preference:

- "digits": scikit-learn's bundled 8x8 digits (`experiments.data.digits`), split by
  `validation_fraction` / `seed`. Always offline.
- "fashion_mnist": the original IDX files (as shipped by Debian's `dataset-fashion-mnist` in
  /usr/share/datasets/fashion-mnist/, or any directory named by `idx_dir` or the environment
  variable KF_FASHION_MNIST_DIR), `.gz` or uncompressed. Falls back to TFDS when the default
  directory does not hold them.
- "mnist" / "fashion_mnist": TensorFlow Datasets. The TFDS "test" split is the validation set.
  With `data_dir` set, TFDS reads a prepared copy there and never downloads (download=False), so a
  machine without a network fails at once instead of waiting on retries; without it, TFDS
  downloads into its default directory.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header
`0x00 0x00 <type code> <ndim>`, then `ndim` big-endian uint32 sizes, then the values row-major in
the big-endian type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64).

Every expected failure (unknown name, no network, missing or corrupt files, bad caps) raises
`ConfigError` with one line; the launcher prints it and exits with code 2.
"""

import gzip
import os
import zlib

import numpy as np

from experiments.data.digits import load_digits
from experiments.runtime.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion_mnist")

_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10}
_INPUT_DIM = {"digits": 64, "mnist": 28 * 28, "fashion_mnist": 28 * 28}

# Where the original IDX files may already be on disk: (environment variable, default directory).
_IDX_LOCATIONS = {"fashion_mnist": ("KF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
# TFDS examples are pulled into NumPy in chunks of this many (bounded memory per step).
_CHUNK = 8192


def _check_name(name):
    if name not in DATASETS:
        raise ConfigError(f"unknown --dataset={name!r}; choose one of {', '.join(DATASETS)}")


def num_classes(name):
    """Returns the number of classes of dataset `name`.

    Args:
        name: One of `DATASETS`.

    Returns:
        The number of classes (labels lie in `[0, num_classes)`).

    Raises:
        ConfigError: If `name` is not in `DATASETS`.
    """
    _check_name(name)
    return _NUM_CLASSES[name]


def input_dim(name):
    """Returns the number of features of one flattened example of dataset `name`.

    Args:
        name: One of `DATASETS`.

    Returns:
        The flattened image size (64 for digits, 784 for the 28x28 datasets).

    Raises:
        ConfigError: If `name` is not in `DATASETS`.
    """
    _check_name(name)
    return _INPUT_DIM[name]


def read_idx(path):
    """Reads one IDX file (optionally gzip-compressed) into a NumPy array.

    Args:
        path: Path of the file; gzip is detected from its first bytes, not its name.

    Returns:
        An array with the file's dimensions and native-endian dtype.

    Raises:
        ConfigError: If the file cannot be read or is not a well-formed IDX file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"could not read IDX file {path}: {_short(e)}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ConfigError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ConfigError(f"{path} is not an IDX file (unknown type code 0x{type_code:02x})")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ConfigError(f"{path} is truncated (header of {ndim} dimensions incomplete)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ConfigError(
            f"{path} has {len(data)} bytes but its header {shape} implies {expected}")
    values = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _short(error):
    """The first line of an exception's message, capped, for one-line ConfigErrors."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _idx_path(directory, stem):
    """The existing `.gz` or uncompressed file for `stem` in `directory`, else None."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_directory(name, idx_dir):
    """Returns (directory, explicit) for the IDX files of `name`, or (None, False)."""
    if name not in _IDX_LOCATIONS:
        return None, False
    env_var, default = _IDX_LOCATIONS[name]
    if idx_dir is not None:
        return idx_dir, True
    if os.environ.get(env_var):
        return os.environ[env_var], True
    return default, False


def _load_idx(name, directory):
    """Reads the four IDX files of `name` from `directory` as (x, y) train and test arrays."""
    arrays = {}
    for key, stem in _IDX_FILES.items():
        path = _idx_path(directory, stem)
        if path is None:
            raise ConfigError(
                f"could not load --dataset={name} from {directory}: missing {stem}[.gz]")
        arrays[key] = read_idx(path)
    splits = []
    for prefix in ("train", "test"):
        images, labels = arrays[prefix + "_images"], arrays[prefix + "_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(
                f"could not load --dataset={name} from {directory}: {prefix} images "
                f"{images.shape} and labels {labels.shape} do not match")
        splits.append((images, labels))
    return splits


def _load_tfds(name, data_dir):
    """Loads the TFDS train and test splits of `name` as NumPy (images, labels) pairs."""
    where = (f"from --data_dir={data_dir} (a prepared TFDS copy; nothing is downloaded when "
             f"--data_dir is set)" if data_dir is not None
             else "through TFDS (no network? pass --data_dir with a prepared copy)")
    try:
        import tensorflow_datasets as tfds

        splits = []
        for split in ("train", "test"):
            # Not batch_size=-1: under tfds.testing.mock_data the split size is unknown and
            # TFDS would batch by sys.maxsize, which aborts the process; chunks are safe.
            dataset = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True,
                                download=data_dir is None)
            images, labels = [], []
            for x, y in tfds.as_numpy(dataset.batch(_CHUNK)):
                images.append(x)
                labels.append(y)
            if not images:
                raise ValueError(f"split {split!r} is empty")
            splits.append((np.concatenate(images), np.concatenate(labels)))
        return splits
    except ConfigError:
        raise
    except Exception as e:  # TFDS, tf.data and network errors have no common base class.
        raise ConfigError(f"could not load --dataset={name} {where}: {_short(e)}") from None


def _to_features(name, images, labels):
    """Flattens and scales images to [0, 1] float32, labels to int32; checks the result."""
    x = images.reshape(len(images), -1).astype(np.float32)
    if np.issubdtype(images.dtype, np.integer):
        x /= np.float32(np.iinfo(images.dtype).max)
    y = labels.astype(np.int32)
    if x.shape[1] != _INPUT_DIM[name]:
        raise ConfigError(
            f"--dataset={name}: examples have {x.shape[1]} features, expected {_INPUT_DIM[name]}")
    if len(y) and (y.min() < 0 or y.max() >= _NUM_CLASSES[name]):
        raise ConfigError(
            f"--dataset={name}: labels outside [0, {_NUM_CLASSES[name]}): "
            f"[{y.min()}, {y.max()}]")
    return x, y


def _check_cap(flag, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or value < 1):
        raise ConfigError(f"--{flag} must be a positive integer, got {value!r}")


def load_image_classification(name, *, data_dir=None, validation_fraction=0.2, seed=0,
                              max_train=None, max_validation=None, idx_dir=None):
    """Loads an image-classification dataset as flattened [0, 1] features and int labels.

    Args:
        name: One of `DATASETS`.
        data_dir: TFDS data directory holding a prepared copy ("mnist", "fashion_mnist"). When
            set, nothing is downloaded; when None, TFDS downloads into its default directory.
        validation_fraction: Fraction held out for validation ("digits" only; the other
            datasets validate on their official test split).
        seed: Seed of the digits split and of the `max_train` subset.
        max_train: If set, keep a seeded random subset of this many training examples.
        max_validation: If set, keep the first this many validation examples.
        idx_dir: Directory of the original Fashion-MNIST IDX files ("fashion_mnist" only);
            defaults to $KF_FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist (used only
            if the files are there, TFDS otherwise).

    Returns:
        `((x_train, y_train), (x_val, y_val))`: x float32 of shape (n, input_dim(name)) in
        [0, 1], y int32 in [0, num_classes(name)). Identical for identical arguments.

    Raises:
        ConfigError: On an unknown name, a bad argument or any failure to load the data.
    """
    _check_name(name)
    _check_cap("max_train", max_train)
    _check_cap("max_validation", max_validation)

    if name == "digits":
        if not 0.0 < validation_fraction < 1.0:
            raise ConfigError(
                f"--validation_fraction must be in (0, 1), got {validation_fraction!r}")
        (x_train, y_train), (x_val, y_val) = load_digits(validation_fraction, seed)
    else:
        directory, explicit = _idx_directory(name, idx_dir)
        has_files = directory is not None and all(
            _idx_path(directory, stem) for stem in _IDX_FILES.values())
        if explicit or has_files:
            train, test = _load_idx(name, directory)
        else:
            train, test = _load_tfds(name, data_dir)
        x_train, y_train = _to_features(name, *train)
        x_val, y_val = _to_features(name, *test)

    if max_train is not None and max_train < len(x_train):
        # Sorted so the subset keeps the source order; the trainer shuffles per epoch.
        keep = np.sort(np.random.default_rng(seed).choice(len(x_train), max_train, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    if max_validation is not None:
        x_val, y_val = x_val[:max_validation], y_val[:max_validation]
    return (x_train, y_train), (x_val, y_val)
