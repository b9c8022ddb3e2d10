"""What a user can add to a recipe to make it generalise better or stop sooner: augmentation
(--augment), label smoothing, decoupled weight decay, an exponential moving average of the
weights (--ema), and early stopping (--patience). Keras has each of them; this module puts
them into imgclf's fit, resumable like the rest of a run.

Every augmentation runs in the tf.data input pipeline, never in the model: what is saved,
exported and served holds no training-only layer. RandAugment, RandomErasing, MixUp and CutMix
are Keras' layers; MixUp and CutMix turn the training labels into class probabilities, so a
run that mixes computes its loss and accuracy from dense labels (validation stays sparse).
Keras' layers draw from their own random state (RandAugment ignores a seed given per call), so
with them a resumed run's augmentation differs from the uninterrupted run's; the recipes' own
augmentation stays a function of (seed, epoch), exact on resume.
"""

from __future__ import annotations

import keras

from ..config import TrainConfig, augment_names
from ..models.recipes import Recipe, recipe_defaults
from .checkpoint import Stateful

MIXUP_ALPHA = 0.2  # Beta(alpha, alpha) mixing weights (timm's and Keras' default)
CUTMIX_FACTOR = 1.0  # Beta(1, 1): a uniformly drawn area share
RANDAUGMENT_OPS = 2  # operations per image
RANDAUGMENT_FACTOR = 0.5  # their strength, of Keras' range
ERASING_FACTOR = 0.5  # share of images with one erased rectangle
NO_WEIGHT_DECAY = ("bias", "beta", "gamma")  # variable names --weight-decay leaves alone


def mixes(config: TrainConfig) -> bool:
    """The run's training labels are mixed (MixUp or CutMix): dense labels in training."""
    return bool({"mixup", "cutmix"} & set(augment_names(config.augment)))


def training_augment(config: TrainConfig, recipe: Recipe, num_classes: int):
    """(augment, mix) for `data.pipeline.make_train_dataset`: `augment(uint8 images, seed,
    index, epoch) -> images` (the recipe's own, then RandAugment and RandomErasing), and
    `mix(images, labels, seed) -> (images, class probabilities)` (MixUp or CutMix: with both,
    each batch gets one of them, as timm does), each None when not asked for."""
    import tensorflow as tf

    names = augment_names(config.augment)
    own = recipe.augment if "recipe" in names else None
    pixel_layers = []
    if "randaugment" in names:
        pixel_layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=RANDAUGMENT_OPS,
                                                     factor=RANDAUGMENT_FACTOR, seed=config.seed, dtype="float32"))
    if "erasing" in names:
        pixel_layers.append(keras.layers.RandomErasing(factor=ERASING_FACTOR, value_range=(0, 255), seed=config.seed,
                                                        dtype="float32"))
    augment = own
    if pixel_layers:
        def augment(images, seed, index, epoch):
            if own is not None:
                images = own(images, seed, index, epoch)
            images = tf.cast(images, tf.float32)
            for layer in pixel_layers:
                images = layer(images, training=True)
            return tf.clip_by_value(images, 0.0, 255.0)
    # float32 layers whatever the precision policy: pixels and mixed labels stay exact
    mixers = []
    if "mixup" in names:
        mixers.append(keras.layers.MixUp(alpha=MIXUP_ALPHA, seed=config.seed, dtype="float32"))
    if "cutmix" in names:
        mixers.append(keras.layers.CutMix(factor=CUTMIX_FACTOR, seed=config.seed, dtype="float32"))
    if not mixers:
        return augment, None

    def mix(images, labels, seed):
        data = {"images": tf.cast(images, tf.float32), "labels": tf.one_hot(labels, num_classes)}
        if len(mixers) == 1:
            mixed = mixers[0](data, training=True)
        else:
            pick = tf.random.stateless_uniform((), tf.stack([seed[1], seed[0]])) < 0.5
            mixed = tf.cond(pick, lambda: mixers[0](data, training=True), lambda: mixers[1](data, training=True))
        return mixed["images"], mixed["labels"]
    return augment, mix


def dense_labels(y_true, y_pred):
    """Class probabilities from either kind of label: class indices (validation, most
    training) or probabilities already (training with MixUp/CutMix)."""
    from keras import ops

    classes = y_pred.shape[-1]
    if len(y_true.shape) == 2 and y_true.shape[-1] == classes and classes != 1:
        return ops.cast(y_true, y_pred.dtype)
    return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes, dtype=y_pred.dtype)


def training_loss(config: TrainConfig, recipe: Recipe):
    """The loss to compile: the recipe's own when the run keeps its label smoothing and does
    not mix labels (so default runs are unchanged), else cross-entropy on either kind of
    label with the run's label smoothing."""
    smoothing = config.label_smoothing
    if smoothing is None or (smoothing == recipe_defaults(config.model).label_smoothing and not mixes(config)):
        return recipe.loss

    def crossentropy(y_true, y_pred):
        return keras.losses.categorical_crossentropy(dense_labels(y_true, y_pred), y_pred, label_smoothing=smoothing)
    return crossentropy


def training_metrics(config: TrainConfig) -> list:
    """The metrics to compile (before the confusion matrix): accuracy, Keras' by name or (labels
    mixed) the share of images whose top class is the label's top class, which reads both kinds
    of label; and where the loss is smoothed, "nll", the plain log-loss (val_nll: what
    `imgclf tune` compares trials on, with and without smoothing alike)."""
    from keras import ops

    metrics: list = ["accuracy"]
    if mixes(config):
        def accuracy(y_true, y_pred):
            return ops.cast(ops.argmax(dense_labels(y_true, y_pred), -1) == ops.argmax(y_pred, -1), "float32")
        metrics = [keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")]
    if config.label_smoothing:
        def nll(y_true, y_pred):
            return keras.losses.categorical_crossentropy(dense_labels(y_true, y_pred), y_pred)
        metrics.append(keras.metrics.MeanMetricWrapper(nll, name="nll"))
    return metrics


def configure_optimizer(optimizer, config: TrainConfig):
    """--ema and --weight-decay on any recipe's optimizer, before it is built: Keras'
    optimizers keep the moving average (use_ema) and apply decoupled decay themselves."""
    if config.ema:
        optimizer.use_ema = True
        optimizer.ema_momentum = config.ema
        optimizer.ema_overwrite_frequency = None
    if config.weight_decay:
        optimizer.weight_decay = config.weight_decay
        # not the offsets and scales (biases, BatchNorm's beta and gamma), as is usual
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer


class SwapEMAWeights(keras.callbacks.SwapEMAWeights, Stateful):
    """Keras' SwapEMAWeights (validation, the best model and the end of each epoch see the
    averaged weights), made to fit imgclf's fit:

    - resumable: a checkpoint is written with the averaged weights in the model, so a resumed
      run must swap them out before it trains on (the flag is in the checkpoint);
    - a new phase (a fine-tuning run's second compile) starts a new optimizer, whose averages
      are not built yet: `new_optimizer` says the model holds the weights to go on from;
    - `finish_early` (an early stop) puts the averages into the model for good, as Keras does
      only at the last epoch;
    - `refresh(model)`, where the recipe re-estimates BatchNorm statistics (the fast family),
      re-estimates them for the averaged weights before they are validated and saved."""

    def __init__(self, refresh=None):
        super().__init__(swap_on_epoch=True)
        self.refresh = refresh
        self._refreshed = False

    def new_optimizer(self):
        self._ema_weights_in_model = False

    def finish_early(self):
        if self._ema_weights_in_model:
            self._finalize_ema_values()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._refreshed = False

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        self._refresh()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._refresh()

    def _refresh(self):
        if self.refresh is not None and self._ema_weights_in_model and not self._refreshed:
            self.refresh(self.model)
            self._refreshed = True

    def get_state(self):
        return {"ema_in_model": self._ema_weights_in_model}, []

    def set_state(self, info, arrays):
        self._ema_weights_in_model = bool(info["ema_in_model"])


class EarlyStopping(keras.callbacks.EarlyStopping, Stateful):
    """Keras' EarlyStopping on the validation loss (best weights are kept by
    BestModelCheckpoint, not restored here), whose count of epochs without improvement
    survives a resume and the phases of a fine-tuning run: `stopped_epoch` (1-based, 0 while
    training goes on) is in the checkpoint, and a resumed run that had stopped trains no more."""

    def __init__(self, patience: int, min_delta: float, epochs: int, ema: SwapEMAWeights | None = None):
        super().__init__(monitor="val_loss", patience=patience, min_delta=min_delta, mode="min")
        self.epochs, self.ema = epochs, ema  # the run's epochs (a stop at the last is no early stop)
        self.on_train_begin()  # Keras resets its counters there: once, not at every fit() of a phase

    def on_train_begin(self, logs=None):
        if not getattr(self, "_started", False):
            super().on_train_begin(logs)
            self._started = True

    def on_epoch_end(self, epoch, logs=None):
        before = self.stopped_epoch
        super().on_epoch_end(epoch, logs)
        if self.stopped_epoch == before:
            return
        if epoch + 1 >= self.epochs:  # the last epoch: the run ends anyway
            self.stopped_epoch, self.model.stop_training = before, False
            return
        self.stopped_epoch = epoch + 1  # Keras' is 0-based, with 0 also meaning "not stopped"
        if self.ema is not None:
            self.ema.finish_early()

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def on_train_end(self, logs=None):  # Keras prints its own line here; the loop prints ours
        pass

    def get_state(self):
        best = float(self.best) if self.best is not None else None
        return {"wait": self.wait, "best": best, "stopped_epoch": self.stopped_epoch}, []

    def set_state(self, info, arrays):
        self.wait, self.stopped_epoch = int(info["wait"]), int(info["stopped_epoch"])
        self.best = info["best"] if info["best"] is not None else self.best
