"""Resumable training: the whole state of a run after each completed epoch.

The checkpoint (written by `RunFolder.write_checkpoint`) holds every model variable (weights,
BatchNorm statistics and the random-generator states of augmentation/dropout layers), every
optimizer variable (moments and the step counter, hence the learning-rate schedule's
position), the epoch, and the state of each stateful callback (history rows, best validation
loss and the best weights). It is written atomically after everything else of the epoch, so
a kill at any instant leaves the previous epoch's complete checkpoint. The training data's
order and augmentation depend only on (seed, epoch), so nothing else is needed to continue
exactly where the run stopped.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from ..errors import CheckpointError
from ..run.folder import RunFolder


class Stateful:
    """A callback whose state must survive a resume: `get_state() -> (json-able dict,
    list of arrays)` and `set_state(info, arrays)`."""

    def get_state(self) -> tuple[dict, list[np.ndarray]]:
        raise NotImplementedError

    def set_state(self, info: dict, arrays: list[np.ndarray]) -> None:
        raise NotImplementedError


class TrainingCheckpoint(keras.callbacks.Callback):
    """Write the checkpoint at the end of every epoch; put it last among the callbacks."""

    def __init__(self, run: RunFolder, stateful: dict[str, Stateful]):
        super().__init__()
        self.run = run
        self.stateful = stateful

    def on_epoch_end(self, epoch, logs=None):
        self.run.write_checkpoint(*capture_state(self.model, epoch + 1, self.stateful))


def capture_state(model: keras.Model, epoch: int, stateful: dict[str, Stateful]) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays): the state after `epoch` completed epochs."""
    arrays = {f"model/{i}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)})
    callbacks = {}
    for name, callback in stateful.items():
        info, state_arrays = callback.get_state()
        callbacks[name] = {"info": info, "arrays": len(state_arrays)}
        arrays.update({f"{name}/{i}": np.asarray(a) for i, a in enumerate(state_arrays)})
    meta = {
        "epoch": epoch,
        "model_variables": [v.path for v in model.variables],
        "optimizer_variables": len(model.optimizer.variables),
        "callbacks": callbacks,
    }
    return meta, arrays


def restore_state(meta: dict, arrays: dict[str, np.ndarray], model: keras.Model,
                  stateful: dict[str, Stateful]) -> int:
    """Put a checkpoint's state into a compiled `model` (same architecture) and callbacks;
    return the number of completed epochs."""
    variables = model.variables
    if [_unnumbered(v.path) for v in variables] != [_unnumbered(p) for p in meta["model_variables"]]:
        raise CheckpointError("the checkpoint does not match the model (different architecture)")
    for i, variable in enumerate(variables):
        _assign(variable, arrays[f"model/{i}"])
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    if len(optimizer.variables) != meta["optimizer_variables"]:
        raise CheckpointError("the checkpoint does not match the optimizer")
    for i, variable in enumerate(optimizer.variables):
        _assign(variable, arrays[f"optimizer/{i}"])
    for name, callback in stateful.items():
        saved = meta["callbacks"].get(name)
        if saved is None:
            raise CheckpointError(f"the checkpoint has no state for {name}")
        callback.set_state(saved["info"], [arrays[f"{name}/{i}"] for i in range(saved["arrays"])])
    return int(meta["epoch"])


def _unnumbered(path: str) -> str:
    """A variable's path without Keras' automatic layer numbers (conv2d_3/kernel -> conv2d/kernel):
    a process that built other models before numbers the same layers differently."""
    return re.sub(r"_\d+(?=/|$)", "", path)


def _assign(variable, value: np.ndarray) -> None:
    if tuple(variable.shape) != value.shape:
        raise CheckpointError(f"the checkpoint's {variable.path} has shape {value.shape}, "
                              f"the model's {tuple(variable.shape)}")
    variable.assign(value)
