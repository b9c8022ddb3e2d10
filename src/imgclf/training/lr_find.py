"""The learning-rate range test (Smith 2015; fastai's `lr_find`), for any recipe.

The recipe's model and optimizer train for a few hundred steps while every step size grows
exponentially, from `START` to `END` times the recipe's default; the loss of each batch is
smoothed (a debiased moving average, as fastai does) and the test stops once the smoothed loss
passes DIVERGED x its minimum. The suggestion is the step size where the smoothed loss falls
fastest (per factor of step size, before its minimum): Smith's original choice, fastai's
"steep". fastai's "valley" and the step size at the minimum are reported too. On generated
colours, "steep" came out within 1.5x of a step size that trains well for `seed` and 12x below
the default for `fast-tiny`, "valley" 8x and 45x below (docs/experiments.md). Every value is one that
`imgclf train --learning-rate` takes (the recipe's peak step size; every other step size of the
recipe scales with it).

Writes to a folder: lr_find.csv (step, learning rate, loss, smoothed loss), lr_find.png and
lr_find.json (the suggestion and what it was measured on).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from ..config import AUTO, TrainConfig
from ..data.labelled import LoadedData
from ..data.pipeline import make_train_dataset, sample_pixels, train_steps
from ..data.sources import load_data
from ..errors import ImgclfError
from ..models.recipes import check, pick_recipe, resolve
from ..models.registry import get_recipe
from ..run.atomic import write_csv, write_figure, write_json
from .fit import DATA_INIT_IMAGES, build_model
from .precision import compute_precision, resolve_precision
from .regularize import configure_optimizer, training_augment, training_loss, training_metrics

STEPS = 200  # optimisation steps of the sweep
START, END = 1e-5, 1e3  # the sweep's range, as multiples of the recipe's default step size
SMOOTHING = 0.9  # weight of the past in the smoothed loss (fastai: 0.98 over 100 steps; 0.9 lags less)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this many times its minimum
CSV, PNG, JSON = "lr_find.csv", "lr_find.png", "lr_find.json"


@dataclass
class LrFindResult:
    suggestion: float  # train --learning-rate: the steepest fall of the smoothed loss
    minimum: float  # step size at the smoothed loss's minimum
    valley: float  # fastai's "valley" suggestion
    default: float  # the recipe's own step size at this batch size
    model: str
    batch_size: int
    steps: int  # steps run (fewer than asked when the loss diverged)
    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    out: str

    def line(self) -> str:
        return (f"suggested learning rate: {self.suggestion:.3g} (train --learning-rate {self.suggestion:.3g}), "
                f"where the loss fell fastest; it was lowest at {self.minimum:.3g} (fastai's valley: "
                f"{self.valley:.3g}); the {self.model} recipe's default at batch {self.batch_size} is "
                f"{self.default:.3g}")


class ExponentialSweep(keras.optimizers.schedules.LearningRateSchedule):
    """start x (end / start) ^ (step / (steps - 1))."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step):
        fraction = keras.ops.cast(step, "float32") / max(1, self.steps - 1)
        return self.start * keras.ops.power(self.end / self.start, fraction)

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


def lr_find(config: TrainConfig, out: str | Path, *, steps: int = STEPS, start: float = START, end: float = END,
            data: LoadedData | None = None) -> LrFindResult:
    """Run the range test for `config`'s recipe on its training split (the validation split
    is left out, as in training) and write its files to `out`."""
    from .loop import split_data

    check(config)
    if steps < 10:
        raise ImgclfError(f"lr-find needs at least 10 steps (got {steps})")
    if not 0 < start < end:
        raise ImgclfError(f"lr-find's range must satisfy 0 < start < end (got {start}, {end})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImgclfError(f"--out {out} is a file, not a folder")
    keras.utils.set_random_seed(config.seed)
    data = data if data is not None else load_data(config)
    split = split_data(data, config)
    if config.model == AUTO:
        config = config.replace(model=pick_recipe(len(split.train), config.size, config.weights)[0])
    config = resolve(config, len(split.train))
    recipe = get_recipe(config.model)
    per_epoch = train_steps(len(split.train), config.batch_size)
    pixels = sample_pixels(split.train, DATA_INIT_IMAGES, seed=config.seed) if recipe.needs_data else None
    precision = resolve_precision(config.precision)
    started = time.perf_counter()
    with compute_precision(precision):
        model = build_model(config, len(data.labelled.class_names), pixels)
        # phase 1 of a pretrained backbone (its head alone) is what its first epochs train
        optimizer = configure_optimizer(recipe.make_optimizer(config.learning_rate, per_epoch, 1), config)
        base = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer.learning_rate = ExponentialSweep(base * start, base * end, steps)
        if recipe_is_backbone(config):
            from ..models.backbones import set_phase

            set_phase(model, 1, config.unfreeze)
        model.compile(optimizer=optimizer, loss=training_loss(config, recipe), metrics=training_metrics(config))
        augment, mix = training_augment(config, recipe, len(data.labelled.class_names))
        batches = make_train_dataset(split.train, config.batch_size, seed=config.seed,
                                     epochs=math.ceil(steps / per_epoch), augment=augment, mix=mix)
        losses = _sweep(model, batches, steps)
    rates = [config.learning_rate * start * (end / start) ** (i / (steps - 1)) for i in range(len(losses))]
    smoothed = smooth(losses)
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        raise ImgclfError("lr-find: the loss was not finite from the first step; check the data")
    lowest = min(finite, key=lambda i: smoothed[i])
    result = LrFindResult(suggestion=rates[steepest(rates, smoothed, lowest)], minimum=rates[lowest],
                          valley=rates[finite[valley([smoothed[i] for i in finite])]],
                          default=config.learning_rate, model=config.model, batch_size=config.batch_size,
                          steps=len(losses), learning_rates=rates, losses=losses, smoothed=smoothed, out=str(out))
    _write(result, out, time.perf_counter() - started)
    return result


def recipe_is_backbone(config: TrainConfig) -> bool:
    from ..models.recipes import is_backbone

    return is_backbone(config.model) and config.freeze_epochs > 0


def _sweep(model: keras.Model, batches, steps: int) -> list[float]:
    """The loss of each batch (metrics reset before each, so it is that batch's, not a mean),
    until `steps` or the smoothed loss diverges."""
    losses: list[float] = []
    best = math.inf
    for x, y in batches.take(steps):
        model.reset_metrics()
        loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        losses.append(loss)
        current = smooth(losses)[-1]
        if not math.isfinite(current) or current > DIVERGED * best:
            break
        best = min(best, current)
    return losses


def steepest(rates: list[float], smoothed: list[float], lowest: int) -> int:
    """The index, up to the minimum `lowest`, where the smoothed loss falls fastest per unit of
    log step size."""
    if lowest < 2:
        return lowest
    slope = np.gradient(np.asarray(smoothed[:lowest + 1]), np.log(np.asarray(rates[:lowest + 1])))
    return int(np.argmin(slope))


def valley(losses: list[float]) -> int:
    """fastai's `valley` suggestion: the index a half of the way (1/3 + 1/6) into the longest
    decreasing subsequence of `losses`."""
    n = len(losses)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return max(0, min(n - 1, start + int(third) + int(third / 2)))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The debiased exponential moving average of the losses (nan stays nan onwards)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** i))
    return out


def _write(result: LrFindResult, out: Path, seconds: float) -> None:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / CSV, ["step", "learning_rate", "loss", "smoothed_loss"],
              [[i + 1, f"{r:.6g}", f"{v:.6g}", f"{s:.6g}"] for i, (r, v, s) in
               enumerate(zip(result.learning_rates, result.losses, result.smoothed))])
    summary = {k: v for k, v in asdict(result).items() if k not in ("learning_rates", "losses", "smoothed")}
    write_json(out / JSON, {**summary, "seconds": round(seconds, 1)})
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(result.learning_rates, result.losses, color="#bbb", lw=0.8, label="loss of each batch")
    ax.plot(result.learning_rates, result.smoothed, color="C0", label="smoothed")
    ax.axvline(result.suggestion, color="C3", ls="--", label=f"suggested {result.suggestion:.3g}")
    ax.axvline(result.default, color="C2", ls=":", label=f"recipe default {result.default:.3g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(0, min(max(finite), max(finite[0], DIVERGED * min(finite))) * 1.1)
    ax.set_xlabel("learning rate (train --learning-rate)")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test: {result.model}, batch {result.batch_size}")
    ax.legend(fontsize=8)
    figure.tight_layout()
    write_figure(out / PNG, figure, 110)

