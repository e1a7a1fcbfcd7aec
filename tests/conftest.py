"""Test-session setup shared by every test.

TensorFlow fixes its device list the first time it is touched, so the split of the host CPU
into two logical devices (what MirroredStrategy tests replicate over) happens here, before any
test module imports a model.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import pytest  # noqa: E402


@pytest.fixture
def two_cpus():
    """The names of the two logical CPU devices, for MirroredStrategy tests."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, devices
    return devices[:2]


@pytest.fixture
def mirrored_two_cpus(two_cpus):
    """A MirroredStrategy over the two logical CPUs, set up as the runtime's factory does.

    CPU collectives from several MirroredStrategy instances in one process can collide on
    their instance keys; plain copies to one device cannot (and are what CPUs want anyway).
    """
    return tf.distribute.MirroredStrategy(
        two_cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
