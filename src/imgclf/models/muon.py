"""Muon (MomentUm Orthogonalized by Newton-Schulz) for conv filters, Nesterov SGD for the rest.

Keller Jordan's optimizer (2024), as airbench94_muon uses it on CIFAR-10: each conv
kernel's Nesterov momentum is replaced by (approximately) the nearest semi-orthogonal
matrix, U V^T of its SVD, found by a few Newton-Schulz iterations, and the kernel is
renormalised to a fixed norm before each step (BatchNorm follows every conv, so only
the direction matters). Everything else -- BatchNorm offsets, biases, the classifier --
takes plain Nesterov SGD steps with coupled weight decay. Every learning rate is
multiplied by the optimizer's schedule (a factor from 1 down to 0).
"""

from __future__ import annotations

import keras
from keras import ops

# Quintic Newton-Schulz coefficients (Jordan, 2024): chosen to maximise the slope at zero,
# so 3 iterations suffice; singular values land in roughly [0.5, 1.5] rather than at 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


def orthogonalize(matrix, steps: int = NS_STEPS, eps: float = 1e-7):
    """Approximately U V^T for matrix = U S V^T (float32 throughout)."""
    a, b, c = NS_COEFFICIENTS
    x = ops.cast(matrix, "float32")
    x = x / (ops.sqrt(ops.sum(ops.square(x))) + eps)  # spectral norm <= Frobenius norm = 1
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:
        x = ops.transpose(x)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if tall else x


class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """1 at step 0, falling linearly to 0 at `total_steps` (then 0). `set_total_steps` moves
    the end while training runs (--time-budget shortens a run whose epochs are slower than
    timed, so that it still anneals to 0): the traced step reads it from a variable."""

    def __init__(self, total_steps: int):
        import tensorflow as tf

        self.total = max(1, int(total_steps))
        self._total = tf.Variable(float(self.total), trainable=False, dtype="float32")

    def set_total_steps(self, total_steps: int) -> None:
        self.total = max(1, int(total_steps))
        self._total.assign(float(self.total))

    def __call__(self, step):
        return ops.maximum(0.0, 1.0 - ops.cast(step, "float32") / self._total)

    def get_config(self):
        return {"total_steps": self.total}


class Muon(keras.optimizers.Optimizer):
    """Muon for 4-D conv kernels (except those named in `sgd_paths`), Nesterov SGD for the rest.

    `learning_rate` is the schedule's factor; the step sizes are `muon_lr` (conv kernels,
    per step: the update's scale does not depend on the gradient's) and, for SGD variables,
    `lr_multipliers[name]` where `name` is the variable's last path component (e.g. 'beta',
    'kernel', 'bias'), 'default' otherwise. SGD weight decay is coupled: `weight_decay_l2[name]`
    x weight is added to the gradient. Variables whose path ends with `early_stop_path` take
    their own linear schedule, from full to 0 over `early_stop_steps`, then stay fixed.
    """

    def __init__(self, learning_rate=1.0, muon_lr: float = 0.24, muon_momentum: float = 0.6,
                 sgd_momentum: float = 0.85, lr_multipliers: dict | None = None,
                 weight_decay_l2: dict | None = None, early_stop_path: str = "", early_stop_steps: int = 0,
                 name: str = "muon", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.muon_lr = muon_lr
        self.muon_momentum = muon_momentum
        self.sgd_momentum = sgd_momentum
        self.lr_multipliers = dict(lr_multipliers or {"default": 1.0})
        self.weight_decay_l2 = dict(weight_decay_l2 or {})
        self.early_stop_path = early_stop_path
        self.early_stop_steps = early_stop_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momenta = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def uses_muon(self, variable) -> bool:
        return len(variable.shape) == 4 and not self._early_stopped(variable)

    def _early_stopped(self, variable) -> bool:
        return bool(self.early_stop_path) and _path(variable).endswith(self.early_stop_path)

    def update_step(self, gradient, variable, learning_rate):
        momentum = self.momenta[self._get_variable_index(variable)]
        gradient = ops.cast(gradient, variable.dtype)
        if self.uses_muon(variable):
            self.assign(momentum, ops.add(ops.multiply(momentum, self.muon_momentum), gradient))
            update = ops.add(gradient, ops.multiply(momentum, self.muon_momentum))  # Nesterov
            out = variable.shape[-1]  # Keras kernels: (kh, kw, in, out)
            update = ops.reshape(orthogonalize(ops.reshape(update, (-1, out))), variable.shape)
            norm = ops.sqrt(ops.sum(ops.square(variable)))
            self.assign(variable, ops.multiply(variable, (out ** 0.5) / (norm + 1e-12)))
            self.assign_sub(variable, ops.multiply(update, ops.multiply(learning_rate, self.muon_lr)))
            return
        key = _path(variable).rsplit("/", 1)[-1]
        base_lr = self.lr_multipliers.get(key, self.lr_multipliers.get("default", 1.0))
        if self._early_stopped(variable):  # its own schedule instead of the optimizer's
            learning_rate = ops.maximum(0.0, 1.0 - ops.cast(self.iterations, "float32") / max(1, self.early_stop_steps))
        lr = ops.multiply(learning_rate, base_lr)
        decay = self.weight_decay_l2.get(key, 0.0)
        if decay:
            gradient = ops.add(gradient, ops.multiply(variable, decay))
        self.assign(momentum, ops.add(ops.multiply(momentum, self.sgd_momentum), gradient))
        step = ops.add(gradient, ops.multiply(momentum, self.sgd_momentum))  # Nesterov
        self.assign_sub(variable, ops.multiply(step, ops.cast(lr, variable.dtype)))

    def get_config(self):
        return {**super().get_config(), "muon_lr": self.muon_lr, "muon_momentum": self.muon_momentum,
                "sgd_momentum": self.sgd_momentum, "lr_multipliers": self.lr_multipliers,
                "weight_decay_l2": self.weight_decay_l2, "early_stop_path": self.early_stop_path,
                "early_stop_steps": self.early_stop_steps}


def _path(variable) -> str:
    """'layer/weight' for Keras variables and for the backend variables (e.g. TensorFlow's
    'model/layer/weight:0') that a compiled train step hands to `update_step`."""
    return getattr(variable, "path", None) or variable.name.split(":")[0]
