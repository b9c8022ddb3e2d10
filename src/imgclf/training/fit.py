"""The fit itself, in named steps: build the model (or start from an earlier one), make the
callbacks, restore a checkpoint, then one `model.fit` per phase (a pretrained backbone trains
its head on the frozen base first), and save the last model.

The order of these steps is part of the result: with --deterministic, the same order of
random draws (initialisation, then the recipe's callbacks) gives the same history.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import keras

from ..config import TrainConfig, augment_names
from ..data.labelled import Images
from ..data.pipeline import make_dataset, make_train_dataset, sample_pixels, steps_per_call, train_steps
from ..evaluation.metrics import ConfusionMatrix
from ..inference.modelio import save_model
from ..models.backbones import set_phase
from ..models.recipes import SAVED_RECIPE_KEY, Recipe, learning_rate_scale, recipe_defaults
from ..models.registry import create_model
from ..run.folder import RunFolder
from .callbacks import BestModelCheckpoint, EpochMetrics, ReplicatedValidation
from .checkpoint import Stateful, TrainingCheckpoint, restore_state
from .distribute import all_sum, fit_replicated, replicas, tf_strategy, worker_position, worker_shard
from .regularize import (
    EarlyStopping,
    SwapEMAWeights,
    configure_optimizer,
    training_augment,
    training_loss,
    training_metrics,
)
from .tracking import tracking_callbacks
from .transfer import load_init, transfer_model

EVAL_BATCH = 256  # validation batch size (no gradients, so larger batches are cheaper)
DATA_INIT_IMAGES = 5000  # training images handed to models with data-dependent initialisation
WORKER_SEED_STRIDE = 1_000_003  # worker i of several shuffles and augments its shard with seed + i * this

Phase = tuple[int, int, int]  # (phase, first epoch, end epoch)


@dataclass
class Fitted:
    best: BestModelCheckpoint
    first_epoch: int  # epochs already done when this process started (resume)
    stopped_epoch: int | None = None  # --patience or --time-budget stopped the run after this epoch
    stopped_by: str | None = None  # which: "patience" or "time_budget"
    epochs_run: int = 0  # epochs completed in all (all of them, or up to the early stop)


@dataclass
class Callbacks:
    """What watches a fit: the per-epoch metrics, the best model, the recipe's own callbacks,
    the replicated validation (several replicas only) and the user's."""
    history: EpochMetrics
    best: BestModelCheckpoint
    recipe: list
    own_validation: list
    extra: list
    stateful: dict[str, Stateful]  # what the checkpoint saves and a resume restores
    ema: SwapEMAWeights | None = None  # --ema: first, so that validation and the best model see the average
    early: EarlyStopping | None = None  # --patience
    budget: Any = None  # --time-budget: budget.TimeBudgetGuard
    tracking: list = dataclasses.field(default_factory=list)  # TensorBoard, MLflow: after the history

    def for_fit(self, run: RunFolder) -> list:
        # the averaged weights go in first: our own validation (several replicas) measures them too
        ema = [c for c in (self.ema,) if c is not None]
        stop = [c for c in (self.early, self.budget) if c is not None]
        return [*ema, *self.own_validation, self.history, *self.tracking, *self.recipe, self.best, *stop,
                *self.extra, TrainingCheckpoint(run, self.stateful)]

    @property
    def stopper(self):
        """What stopped the run before its last epoch (early stopping, the time budget), or None."""
        return next((c for c in (self.early, self.budget) if c is not None and c.stopped), None)

    @property
    def stopped(self) -> bool:
        return self.stopper is not None


def fit(config: TrainConfig, recipe: Recipe, run: RunFolder, train: Images, val: Images, class_names: list[str],
        checkpoint, extra_callbacks: list | None, budget_guard=None) -> Fitted:
    """Build the model, restore a checkpoint if there is one, train the remaining epochs of
    each phase (compiled for that phase) and save the last model. `budget_guard`
    (--time-budget: a budget.TimeBudgetGuard) stops it between epochs when time runs out."""
    steps_per_epoch = train_steps(len(train), config.batch_size)
    pixels = sample_pixels(train, DATA_INIT_IMAGES, seed=config.seed) if recipe.needs_data else None
    model = build_model(config, len(class_names), pixels)
    matrix = ConfusionMatrix(len(class_names))
    strategy = tf_strategy()
    metadata = {SAVED_RECIPE_KEY: config.model, "resize": config.resize}
    callbacks = make_callbacks(config, recipe, run, model, matrix, class_names, steps_per_epoch, pixels, metadata,
                               extra_callbacks, budget_guard)
    validation = make_dataset(worker_shard(val, strategy), max(config.batch_size, EVAL_BATCH), config.cache)
    if replicas(strategy) > 1:  # model.fit's validation sees only this worker's shard
        callbacks.own_validation = [ReplicatedValidation(validation, matrix, training_loss(config, recipe),
                                                         all_sum=lambda values: all_sum(strategy, values))]
    phases = plan_phases(config)
    done = int(checkpoint[0]["epoch"]) if checkpoint is not None else 0
    # the checkpoint holds the optimizer of the phase its last epoch ran in (the last phase:
    # one a time budget grew past its planned end)
    current = next((p for p in phases if p[1] <= max(done - 1, 0) < p[2]), phases[-1])
    compile_phase(model, config, recipe, matrix, steps_per_epoch, current)
    if budget_guard is not None and budget_guard.can_grow(model.optimizer):  # it ends the fit where its plan does
        phases[-1] = current = (*phases[-1][:2], budget_guard.ceiling)
    first_epoch = 0
    if checkpoint is not None:
        first_epoch = restore_state(*checkpoint, model, callbacks.stateful)
    end = budget_guard.epochs if budget_guard is not None else config.epochs  # the plan, as resumed
    if checkpoint is not None and config.verbose:
        print(f"resuming after epoch {first_epoch} of {end} (best so far: epoch {callbacks.best.best_epoch})"
              + (f"; it had stopped early after epoch {first_epoch}, so nothing more trains"
                 if callbacks.stopped else ""))
    try:
        for phase in phases:
            if phase[2] <= first_epoch or callbacks.stopped or first_epoch >= end:
                continue
            if phase != current:
                compile_phase(model, config, recipe, matrix, steps_per_epoch, phase)
                current = phase
                if callbacks.ema is not None:  # the model holds the weights to go on from
                    callbacks.ema.new_optimizer()
            fit_phase(model, config, recipe, train, validation, strategy, steps_per_epoch,
                      max(first_epoch, phase[1]), phase[2], callbacks.for_fit(run), class_names)
    finally:
        for tracker in callbacks.tracking:  # their files closed, even when the fit failed
            tracker.close()
    stopped = callbacks.stopper.stopped_epoch if callbacks.stopped else None
    if stopped and config.verbose:
        print(f"stopped early after epoch {stopped}: " + (
            callbacks.budget.reason if callbacks.stopper is callbacks.budget else
            f"the validation loss has not improved by more than {config.min_delta:g} for {config.patience} epochs"))
    epochs_run = stopped or (budget_guard.epochs if budget_guard is not None else config.epochs)
    if not (stopped and first_epoch >= stopped):  # a resumed run that had stopped keeps its last model
        save_model(model, run.last_model, class_names, epoch=epochs_run, **metadata)
    stopped_by = None if not stopped else "time_budget" if callbacks.stopper is callbacks.budget else "patience"
    return Fitted(callbacks.best, first_epoch, stopped, stopped_by, epochs_run)


def build_model(config: TrainConfig, num_classes: int, pixels) -> keras.Model:
    """The recipe's model for these classes, or (--init) an earlier model with a new head."""
    input_shape = (*config.size, 3)
    if config.init:
        return transfer_model(load_init(config.init).model, input_shape, num_classes)
    return create_model(config.model, input_shape, num_classes, train_pixels=pixels, weights=config.weights,
                        own_augment="recipe" in augment_names(config.augment))


def make_callbacks(config: TrainConfig, recipe: Recipe, run: RunFolder, model: keras.Model, matrix: ConfusionMatrix,
                   class_names: list[str], steps_per_epoch: int, pixels, metadata: dict,
                   extra_callbacks: list | None, budget_guard=None) -> Callbacks:
    best = BestModelCheckpoint(run, class_names, **metadata)
    history = EpochMetrics(matrix, class_names, run, epochs=config.epochs, verbose=config.verbose)
    recipe_callbacks = recipe.make_callbacks(steps_per_epoch, config.epochs, pixels) if recipe.make_callbacks else []
    best.set_model(model)
    stateful: dict[str, Stateful] = {"history": history, "best": best}
    stateful.update({f"recipe{i}": cb for i, cb in enumerate(recipe_callbacks) if isinstance(cb, Stateful)})
    callbacks = Callbacks(history, best, recipe_callbacks, [], list(extra_callbacks or []), stateful)
    if config.ema:
        refresh = next((cb.refresh for cb in recipe_callbacks if hasattr(cb, "refresh")), None)
        callbacks.ema = stateful["ema"] = SwapEMAWeights(refresh)
        callbacks.ema.set_model(model)
    if config.patience is not None:
        callbacks.early = stateful["early_stopping"] = EarlyStopping(config.patience, config.min_delta,
                                                                     config.epochs, callbacks.ema)
        callbacks.early.set_model(model)
    if budget_guard is not None:
        budget_guard.ema = callbacks.ema  # a stop finalizes the average, as an early stop does
        callbacks.budget = stateful["time_budget"] = budget_guard
        budget_guard.set_model(model)
        budget_guard.followers = [c for c in (history, callbacks.early) if c is not None]  # their "k/N", a moved plan's
    callbacks.tracking = tracking_callbacks(config, run, history, matrix, class_names)
    return callbacks


def plan_phases(config: TrainConfig) -> list[Phase]:
    """(phase, first epoch, end epoch) of each part of the training: one phase 0 (everything
    trains), or for pretrained backbones (and --init with freeze_epochs) phase 1 (the head on
    the frozen backbone) for `freeze_epochs`, then phase 2 (`unfreeze`) for the rest."""
    backbone = recipe_defaults(config.model).backbone
    freeze = min(config.freeze_epochs or 0, config.epochs) if backbone or config.init else 0
    if not freeze:
        return [(0, 0, config.epochs)]
    return [(1, 0, freeze)] + ([(2, freeze, config.epochs)] if freeze < config.epochs else [])


def compile_phase(model: keras.Model, config: TrainConfig, recipe: Recipe, matrix: ConfusionMatrix,
                  steps_per_epoch: int, phase: Phase) -> None:
    """Compile `model` for one phase: which layers train, and a fresh optimizer whose schedule
    spans the phase's epochs."""
    number, start, stop = phase
    if number:
        set_phase(model, number, config.unfreeze)
    options = {"backbone_lr": 1.0 if number == 1 else config.backbone_lr}
    if _takes(recipe.make_optimizer, "lr_scale"):  # (a recipe registered before lr_scale existed does not)
        options["lr_scale"] = learning_rate_scale(config)
    optimizer = recipe.make_optimizer(config.learning_rate, steps_per_epoch, stop - start, **options)
    model.compile(
        optimizer=configure_optimizer(optimizer, config),
        loss=training_loss(config, recipe),
        metrics=[*training_metrics(config), matrix],
        # model.fit's; with several replicas `fit_replicated` runs one step per call (several
        # fail under MirroredStrategy on TF 2.21, docs/distribute.md)
        steps_per_execution=steps_per_call(steps_per_epoch, recipe.steps_per_execution, stop - start),
    )


def _takes(function, name: str) -> bool:
    import inspect

    parameters = inspect.signature(function).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def fit_phase(model: keras.Model, config: TrainConfig, recipe: Recipe, train: Images, validation, strategy,
              steps_per_epoch: int, start: int, stop: int, callbacks: list, class_names: list[str]) -> None:
    """Epochs `start` to `stop` of one phase: `model.fit` on one replica, else
    `fit_replicated` (model.fit fails under multi-worker strategies, docs/distribute.md)."""
    class_weight = [config.class_weight[name] for name in class_names] if config.class_weight else None
    augment, mix = training_augment(config, recipe, len(class_names))
    if replicas(strategy) > 1:
        batches = _worker_batches(train, config, augment, mix, strategy, steps_per_epoch, start, stop)
        fit_replicated(model, strategy, batches, steps_per_epoch=steps_per_epoch, epochs=stop, initial_epoch=start,
                       callbacks=callbacks, class_weight=class_weight)
        return
    model.fit(
        make_train_dataset(train, config.batch_size, seed=config.seed, epochs=stop, first_epoch=start,
                           augment=augment, mix=mix, cache=config.cache),
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        epochs=stop,
        initial_epoch=start,
        shuffle=False,  # the dataset is already in (seed, epoch) order; Keras cannot shuffle it
        class_weight=dict(enumerate(class_weight)) if class_weight else None,
        callbacks=callbacks,
        verbose=1 if config.verbose and _interactive() else 0,
    )


def _worker_batches(train: Images, config: TrainConfig, augment, mix, strategy, steps_per_epoch: int,
                    start: int, stop: int):
    """This worker's training batches under a strategy with several replicas: its shard,
    in per-replica batches (batch_size / replicas), as many per epoch as its replicas take
    in `steps_per_epoch` steps. With one worker, the batches of one step together are the
    global batch one device would get."""
    index, workers = worker_position(strategy)
    return make_train_dataset(worker_shard(train, strategy), config.batch_size // replicas(strategy),
                              seed=config.seed + WORKER_SEED_STRIDE * index, epochs=stop, first_epoch=start,
                              augment=augment, mix=mix, cache=config.cache,
                              batches_per_epoch=steps_per_epoch * replicas(strategy) // workers)


def _interactive() -> bool:
    return sys.stdout.isatty() or "ipykernel" in sys.modules
