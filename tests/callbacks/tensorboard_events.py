"""Reads TensorBoard event files back for the callback tests."""

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator


def read_tensors(log_dir) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Returns {tag: [(step, value), ...]} for every TF2 summary (scalar, histogram, image).

    TF2 `tf.summary` writes all kinds as tensor events, so one reader covers them; images come
    back as an array of strings (width, height, PNG bytes...).
    """
    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [
            (event.step, tf.make_ndarray(event.tensor_proto))
            for event in accumulator.Tensors(tag)
        ]
        for tag in accumulator.Tags()["tensors"]
    }


def scalars(events, tag: str) -> dict[int, float]:
    """Returns {step: value} of one scalar tag."""
    return {step: float(value) for step, value in events[tag]}
