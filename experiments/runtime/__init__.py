"""The shared experiment runtime: flags, strategies, the training loop, sweeps, results, claims.

It knows no topic: experiments import it, never the other way round.
"""

from experiments.runtime import flags
from experiments.runtime.claims import Claim
from experiments.runtime.errors import ConfigError
from experiments.runtime.inputs import distribute, epoch_batches
from experiments.runtime.loop import Trainer, TrainResult, weights_digest
from experiments.runtime.memory import keep_freed_memory
from experiments.runtime.run import Config, Experiment, Run
from experiments.runtime.sweep import SweepPoint
from experiments.runtime.task import SupervisedTask, Task

__all__ = [
    "Claim", "Config", "ConfigError", "Experiment", "Run", "SupervisedTask", "SweepPoint",
    "Task", "TrainResult", "Trainer", "distribute", "epoch_batches", "flags",
    "keep_freed_memory", "weights_digest",
]
