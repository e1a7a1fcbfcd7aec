"""The shared experiment runtime: flags, strategies, the training loop, results and claims.

It knows no topic: experiments import it, never the other way round.
"""

from experiments.runtime import flags
from experiments.runtime.claims import Claim
from experiments.runtime.errors import ConfigError
from experiments.runtime.inputs import distribute, epoch_batches
from experiments.runtime.loop import Trainer, TrainResult, weights_digest
from experiments.runtime.run import Run, launch

__all__ = [
    "Claim", "ConfigError", "Run", "TrainResult", "Trainer", "distribute", "epoch_batches",
    "flags", "launch", "weights_digest",
]
