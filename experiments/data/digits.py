"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the offline default dataset."""

import numpy as np


def load_digits(validation_fraction=0.25, seed=0):
    """Loads the digits, scaled to [0, 1] and split deterministically, stratified by class.

    Args:
        validation_fraction: Fraction of each class held out for validation.
        seed: Seed of the split.

    Returns:
        `(x_train, y_train), (x_val, y_val)` with x of shape (n, 64) float32, y int32.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    data = sklearn_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_val, y_val)
