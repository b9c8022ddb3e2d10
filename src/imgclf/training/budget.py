"""--time-budget: as many epochs as fit in a wall-time budget on this machine.

Before training, a probe times this machine with the run's own model, batches, precision and
augmentation: one untimed call of a few training steps (it traces the graph), then a few
timed steps; the forward pass over validation batches; a save and a load of the model. The
plan is then

    epochs = floor((budget x (1 - MARGIN) - spent - tracing - final evaluation) / epoch)

where `spent` is what the run has used so far (from the CLI, its imports; loading, the probe),
`tracing` what the real fit pays again before its first step, an epoch is its training steps
plus the validation pass (and the recipe's own forward passes: the fast recipes' BatchNorm
re-estimation) plus the files written after it, and the final evaluation is the kept model's
passes over the validation split (x6 views with --tta), its loading and the report. The
step-size schedule spans the planned epochs, so the run anneals to the end of its budget. `budget.json` in the
run folder keeps the plan; a resumed run keeps it.

`TimeBudgetGuard` watches the epochs as they run, at one pace for both directions: the
median of the last PACE_WINDOW epochs, or the last one when it was slower. Should they be
slower than timed (the machine slowed down), it shrinks the plan to the epochs that still fit
and moves the end of the step-size schedule with it, or, where the schedule cannot move, stops
between epochs when no more fits; the best model so far is kept, as with an early stop. Should
they be faster (the probe timed the machine in a slow moment: a shared machine's speed drifts
by up to ~1.75x here), or should a plan shrunk for one slow epoch fit again once the epochs
after it are back to their pace, it grows the plan to the epochs that fit, up to GROW_LIMIT x
the plan, and moves the schedule's end later, at any point of the run; the fit then runs to
that ceiling and the guard ends it where the plan does.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from ..config import TrainConfig
from ..data.labelled import Images
from ..data.pipeline import make_dataset, make_train_dataset, sample_pixels, train_steps
from ..errors import ImgclfError
from ..evaluation.metrics import ConfusionMatrix
from ..inference.predict import TTA_VIEWS
from ..models.recipes import Recipe
from .checkpoint import Stateful
from .fit import DATA_INIT_IMAGES, EVAL_BATCH, build_model, compile_phase, plan_phases
from .regularize import training_augment

BUDGET_FILE = "budget.json"
MARGIN = 0.01  # of the budget, kept free (epochs slower than timed shrink the plan as they come)
PROBE_STEPS = 5  # timed training steps (at least one graph call)
PROBE_EVAL_BATCHES = 3  # validation batches: the first traces, the others are timed
clock = time.perf_counter  # the guard's clock (a test runs it ahead)
FINISH_FIXED_S = 5.0  # the final evaluation's plots, tables and report (measured: 2-4 s)
GROW_LIMIT = 2  # the guard grows a plan to at most this many times its epochs (and --epochs)
PACE_WINDOW = 3  # the guard's pace: the median of this many last epochs (or the last, when slower)


@dataclass(frozen=True)
class Speed:
    """What the probe measured on this machine, in seconds."""
    step: float  # one training step
    forward: float  # one image through the model, inference mode
    save: float  # writing the model to a .keras file
    load: float  # reading it back
    tracing: float  # what the first training and validation calls cost beyond their steps


@dataclass(frozen=True)
class BudgetPlan:
    """The epochs a time budget buys, and the estimates they come from (seconds)."""
    minutes: float
    epochs: int
    max_epochs: int
    step_s: float
    epoch_s: float  # training steps, validation, per-epoch files
    finish_s: float  # the final evaluation
    spent_s: float  # used before the fit: loading, the probe
    tracing_s: float

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "BudgetPlan":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def line(self) -> str:
        capped = f" (the most allowed: {self.max_epochs})" if self.epochs == self.max_epochs else ""
        return (f"time budget {self.minutes:g} min: {self.epochs} epochs{capped} of ~{self.epoch_s:.1f} s "
                f"({self.step_s:.2f} s a step, measured), after {self.spent_s:.0f} s of loading and timing, and "
                f"~{self.finish_s:.0f} s for the final evaluation")


def plan_epochs(budget_s: float, spent_s: float, tracing_s: float, epoch_s: float, finish_s: float,
                max_epochs: int) -> int:
    """The whole epochs that fit: see the module's formula. Raises ImgclfError when not even one does."""
    free = budget_s * (1 - MARGIN) - spent_s - tracing_s - finish_s
    epochs = min(max_epochs, math.floor(free / epoch_s)) if free > 0 else 0
    if epochs < 1:
        need = (spent_s + tracing_s + finish_s + epoch_s) / (1 - MARGIN)
        raise ImgclfError(f"a time budget of {budget_s / 60:g} min leaves no time for one epoch on this machine "
                          f"(~{epoch_s:.1f} s, after {spent_s:.0f} s of loading and timing and ~{finish_s:.0f} s "
                          f"for the final evaluation): give at least {math.ceil(need / 6) / 10:g} min")
    return epochs


def plan(config: TrainConfig, recipe: Recipe, train: Images, val: Images, num_classes: int, *, started: float,
         test_images: int = 0) -> BudgetPlan:
    """The plan for `config` (whose `epochs` is the most it may pick), timed on this machine;
    `started`: time.perf_counter() when the run began (its loading counts)."""
    pixels = sample_pixels(train, DATA_INIT_IMAGES, seed=config.seed) if recipe.needs_data else None
    speed = measure_speed(config, recipe, train, val, num_classes, pixels)
    steps = train_steps(len(train), config.batch_size)
    recipe_callbacks = recipe.make_callbacks(steps, config.epochs, pixels) if recipe.make_callbacks else []
    per_epoch_forward = len(val) + sum(getattr(cb, "forward_images", 0) for cb in recipe_callbacks)
    # after each epoch: the best model (when it improved) and the checkpoint
    epoch_s = steps * speed.step + per_epoch_forward * speed.forward + 2 * speed.save
    views = TTA_VIEWS if config.tta else 1
    # the last model saved; the kept one loaded, calibrated and saved again, and its views of the
    # validation (and test) images predicted, by two models whose inference is traced anew
    finish_s = ((len(val) + test_images) * views * speed.forward + speed.load + 2 * speed.save
                + 2 * speed.tracing + FINISH_FIXED_S)
    spent_s = time.perf_counter() - started
    epochs = plan_epochs(config.time_budget * 60, spent_s, speed.tracing, epoch_s, finish_s, config.epochs)
    return BudgetPlan(config.time_budget, epochs, config.epochs, speed.step, epoch_s, finish_s, spent_s,
                      speed.tracing)


def measure_speed(config: TrainConfig, recipe: Recipe, train: Images, val: Images, num_classes: int,
                  pixels=None) -> Speed:
    """Time a model of the run's recipe (built for the probe, then dropped) on this machine.
    Training steps are those of the last phase (everything that trains: the slowest)."""
    steps_per_epoch = train_steps(len(train), config.batch_size)
    model = build_model(config, num_classes, pixels)
    compile_phase(model, config, recipe, ConfusionMatrix(num_classes), steps_per_epoch, plan_phases(config)[-1])
    per_call = model.steps_per_execution  # what the run's last phase will take
    timed = per_call * math.ceil(PROBE_STEPS / per_call)
    augment, mix = training_augment(config, recipe, num_classes)
    batches = make_train_dataset(train, config.batch_size, seed=config.seed,
                                 epochs=math.ceil((per_call + timed) / steps_per_epoch), augment=augment, mix=mix)

    ends = []  # when each graph call of the probe ended
    marks = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    began = time.perf_counter()
    model.fit(batches, steps_per_epoch=per_call + timed, epochs=1, verbose=0, shuffle=False, callbacks=[marks])
    # the first call traces the step; the rest are timed from its end, the input pipeline's start left out
    step = (ends[-1] - ends[0]) / timed
    first = ends[0] - began
    eval_batch = max(config.batch_size, EVAL_BATCH)
    sample = val.subset(list(range(min(len(val), PROBE_EVAL_BATCHES * eval_batch))))
    ends.clear()
    marks = keras.callbacks.LambdaCallback(on_test_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    began = time.perf_counter()
    model.evaluate(make_dataset(sample, eval_batch), verbose=0, callbacks=[marks])
    # the first batch traces the validation step; the others are timed from its end
    timed_images = len(sample) - min(eval_batch, len(sample))
    forward = (ends[-1] - ends[0]) / timed_images if timed_images else (ends[0] - began) / len(sample)
    first_eval = ends[0] - began
    with tempfile.TemporaryDirectory(prefix="imgclf-budget-") as folder:
        path = Path(folder) / "probe.keras"
        began = time.perf_counter()
        model.save(path)
        save = time.perf_counter() - began
        began = time.perf_counter()
        keras.models.load_model(path, compile=False, safe_mode=False)
        load = time.perf_counter() - began
    tracing = max(0.0, first - per_call * step) + max(0.0, first_eval - forward * min(eval_batch, len(sample)))
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)  # the run draws its initialisation as a run without a budget does
    return Speed(step, forward, save, load, tracing)


class TimeBudgetGuard(keras.callbacks.Callback, Stateful):
    """Keep a run within its budget, between epochs. After each epoch, at the run's pace (see
    `pace`; the first epoch's tracing left out): when fewer epochs fit than the plan has left,
    the plan shrinks to those that fit where the step-size schedule can move its end (the fast
    recipes' `LinearDecay.set_total_steps`), so that the run still anneals to zero; with any
    other schedule, training goes on while one more epoch fits, and stops when none does. The
    best model so far is kept, as with an early stop. When more epochs fit than the plan has
    left, with the plan's margin kept free and room for one epoch as slow as the slowest of the
    last PACE_WINDOW, a movable plan grows to them (up to `ceiling`, the end `fit` runs to:
    see `can_grow`) and the guard ends the fit where the plan ends. The same pace judges both:
    one slow epoch shrinks the plan, and once it has left the window, epochs at the usual
    pace grow it back. Seconds spent by the processes before a resume, and a moved plan, are
    in the checkpoint."""

    def __init__(self, budget: BudgetPlan, started: float, ema=None, verbose: bool = True, movable: bool = True):
        """`started`: time.perf_counter() when this process began the run; `movable`: whether
        the schedule spans the whole run (one phase: a fine-tuning run's second phase has its own)."""
        super().__init__()
        self.plan = budget
        self.budget_s, self.finish_s, self.tracing_s = budget.minutes * 60, budget.finish_s, budget.tracing_s
        self.planned = self.epochs = budget.epochs  # the plan, and what it is now
        self.ceiling = max(budget.epochs, min(budget.max_epochs, GROW_LIMIT * budget.epochs))
        self.started = clock() - (time.perf_counter() - started)  # on the guard's clock
        self.movable = movable
        self.spent_before = 0.0  # seconds of the processes before a resume
        self.stopped_epoch = 0  # 1-based, where the run ended before its planned epochs; 0 otherwise
        self.times: list[float] = []  # the epochs this process has timed, their tracing left out
        self.followers: list = []  # callbacks whose `epochs` follow the plan (the epoch lines' "k/N")
        self.ema, self.verbose = ema, verbose

    def can_grow(self, optimizer) -> bool:
        """Whether the plan may grow, the optimizer compiled: its schedule spans the whole run
        and can move its end. `fit` then runs to `ceiling`, and the guard ends it with the plan."""
        return self.movable and self.ceiling > self.planned and _movable_schedule(optimizer) is not None

    def used(self) -> float:
        return self.spent_before + clock() - self.started

    def pace(self) -> float:
        """Seconds an epoch takes now: the median of the last PACE_WINDOW epochs (of two, their
        mean), so that one stall does not set it, or the last, when slower (the machine slowed
        down: the plan shrinks at once, not a window later)."""
        last = self.times[-PACE_WINDOW:]
        return max(self.times[-1], statistics.median(last))

    def on_epoch_begin(self, epoch, logs=None):
        # from the end of the previous epoch: its checkpoint, written after this callback, counts
        self._first = getattr(self, "_ended", None) is None
        self._began = clock() if self._first else self._ended

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(clock() - self._began - (self.tracing_s if self._first else 0.0))
        self._ended = clock()
        done = epoch + 1
        if self.model.stop_training:  # stopped already (--patience)
            return
        if done >= self.epochs:
            if done < self.params.get("epochs", done):  # the fit runs on (to the ceiling): the plan ends here
                self._stop(done, early=done < self.planned)
            return
        free = self.budget_s - self.used() - self.finish_s
        pace = max(self.pace(), 1e-9)
        fits = math.floor(free / pace)
        schedule = _movable_schedule(self.model.optimizer) if self.movable else None
        if fits < self.epochs - done:
            if schedule is not None and fits >= 1:
                self._replan(schedule, done + fits)
                if self.verbose:
                    print(f"time budget: epochs take ~{pace:.0f} s, longer than timed: the plan is now "
                          f"{self.epochs} epochs (the step-size schedule ends with them)")
            elif fits < 1:
                self._stop(done, early=True)
            return
        # with the plan's margin kept free, and one epoch as slow as the slowest of the window:
        # else the next ordinary epoch can leave the grown plan's last one without the time,
        # and the run stops before its schedule anneals. At any point of the run (growing raises
        # the step size the linear decay has reached, from 1/n to 2/(n+1) of its peak at the
        # latest: the run then anneals over its last two epochs, as when the plan shrinks)
        if schedule is None:
            return
        spare = max(self.times[-PACE_WINDOW:]) - pace
        grown = min(done + math.floor((free - MARGIN * self.budget_s - spare) / pace), self.params.get("epochs", 0))
        if grown > self.epochs:
            self._replan(schedule, grown)
            if self.verbose:
                print(f"time budget: epochs take ~{pace:.0f} s, shorter than timed or than the plan assumed: "
                      f"the plan is now {self.epochs} epochs (the step-size schedule ends with them)")

    def _replan(self, schedule, epochs: int) -> None:
        schedule.set_total_steps(round(schedule.total * epochs / self.epochs))
        self.epochs = epochs
        for follower in self.followers:
            follower.epochs = epochs

    def _stop(self, done: int, early: bool) -> None:
        """End the fit after epoch `done`: `early`, no more epochs fit (or a shrunk plan ends
        before the epochs planned: a stop, as an early stop is); else the plan ends before the
        fit does."""
        self.model.stop_training = True
        if early:
            self.stopped_epoch = done
        if self.ema is not None:
            self.ema.finish_early()

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    @property
    def reason(self) -> str:
        if self.stopped_epoch == self.epochs < self.planned:
            return f"the time budget's plan (shrunk from {self.planned} epochs: they ran slower than timed) ends here"
        return "the next epoch and the final evaluation would not end within the time budget"

    def get_state(self):
        return {"spent": self.used(), "stopped_epoch": self.stopped_epoch, "epochs": self.epochs}, []

    def set_state(self, info, arrays):
        """(after the model is compiled: a moved plan moves the new optimizer's schedule too)"""
        # this process's own loading counts too: `started` stays when it began
        self.spent_before, self.stopped_epoch = float(info["spent"]), int(info["stopped_epoch"])
        if int(info["epochs"]) != self.epochs:
            schedule = _movable_schedule(self.model.optimizer)
            if schedule is not None:
                self._replan(schedule, int(info["epochs"]))


def _movable_schedule(optimizer):
    """The optimizer's step-size schedule if its end can move (`set_total_steps`), else None."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # float16's loss scaling wraps it
    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if callable(getattr(schedule, "set_total_steps", None)) else None
