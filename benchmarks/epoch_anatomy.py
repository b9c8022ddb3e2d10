"""Where a real run's epoch time goes, outside the training step itself (issue 26).

    python benchmarks/epoch_anatomy.py --data-dir ../shared/datasets/cifar10/train \
        [--model fast] [--epochs 2] [--limit N] [--out runs/epoch-anatomy]

Trains with `imgclf.train` as `imgclf train` does (the whole input pipeline, the recipe's
callbacks, the run folder), with every callback hook timed and the fit's own phases read from
timestamps: the first step (the iterator's start), the training steps after it, what runs
between the last step and validation (the recipe's BatchNorm re-estimation), validation, and
the callbacks' end of epoch (history, TensorBoard, the best model, the checkpoint). One line
per epoch, then the hooks that took more than 0.05 s over the run; the figures are the
machine's at that moment (compare epochs of one run, not runs).
"""

from __future__ import annotations

import argparse
import collections
import time

import keras

from imgclf import TrainConfig, train
from imgclf.training import fit as fit_module

HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
         "on_test_end", "on_test_batch_end", "on_train_end")


class Marks(keras.callbacks.Callback):
    """Timestamps of the fit's phases; `where` says whether it runs first or last."""

    def __init__(self, marks: list, where: str):
        super().__init__()
        self.marks, self.where = marks, where

    def _mark(self, name):
        self.marks.append((name, time.perf_counter()))

    def on_epoch_begin(self, epoch, logs=None):
        if self.where == "first":
            self._mark("epoch_begin")

    def on_train_batch_end(self, batch, logs=None):
        if self.where == "first":
            self._mark("batch")

    def on_test_begin(self, logs=None):
        if self.where == "first":
            self._mark("test_begin")

    def on_test_end(self, logs=None):
        if self.where == "first":
            self._mark("test_end")

    def on_epoch_end(self, epoch, logs=None):
        self._mark(f"epoch_end_{self.where}")


def timed_callbacks(spent: dict, marks: list):
    """Callbacks.for_fit with every hook of every callback timed, between two Marks."""
    original = fit_module.Callbacks.for_fit

    def timing(method, key: str):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - began
        return timed

    def for_fit(self, run):
        callbacks = original(self, run)
        for callback in callbacks:
            for hook in HOOKS:
                method = getattr(callback, hook, None)
                if method is not None:
                    setattr(callback, hook, timing(method, f"{type(callback).__name__}.{hook}"))
        return [Marks(marks, "first"), *callbacks, Marks(marks, "last")]

    fit_module.Callbacks.for_fit = for_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="a stratified sample of N images (a quick check)")
    parser.add_argument("--out", default="runs/epoch-anatomy")
    args = parser.parse_args()

    spent: dict[str, float] = collections.defaultdict(float)
    marks: list[tuple[str, float]] = []
    timed_callbacks(spent, marks)
    train(TrainConfig(model=args.model, epochs=args.epochs, data_dir=args.data_dir, limit=args.limit, out=args.out,
                      overwrite=True, calibrate="none"))

    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for name, at in marks:
        by_name[name].append(at)
    steps = len(by_name["batch"]) // args.epochs
    for epoch in range(args.epochs):
        at = {name: times[epoch] for name, times in by_name.items() if name != "batch"}
        batches = by_name["batch"][epoch * steps:(epoch + 1) * steps]
        rest = (batches[-1] - batches[0]) / max(steps - 1, 1)
        print(f"epoch {epoch + 1}: first step {batches[0] - at['epoch_begin']:.1f} s; steps 2-{steps} "
              f"{batches[-1] - batches[0]:.1f} s ({rest:.2f} s a step); after the last step "
              f"{at['test_begin'] - batches[-1]:.1f} s; validation {at['test_end'] - at['test_begin']:.1f} s; "
              f"to the callbacks {at['epoch_end_first'] - at['test_end']:.1f} s; the callbacks' end of epoch "
              f"{at['epoch_end_last'] - at['epoch_end_first']:.1f} s")
    for key, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        if seconds > 0.05:
            print(f"{key:50s} {seconds:7.2f} s over {args.epochs} epochs")


if __name__ == "__main__":
    main()
