"""The one Keras serialization package every component of the suite registers under.

`@register` is `keras.saving.register_keras_serializable(package=PACKAGE)`, so a saved model
refers to the suite's layers, initializers, optimizers and schedules as
`keras_fundamentals>Name`. Layers, optimizers and callbacks all import it from here.
"""

import keras

PACKAGE = "keras_fundamentals"


def register(cls):
    """Registers `cls` with Keras serialization under `PACKAGE` and returns it."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
