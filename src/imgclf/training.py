"""Training: config in, run folder out.

    data -> stratified split -> model -> fit (per-epoch metrics, best-model checkpoint)
         -> final evaluation of the best model -> CSV/JSON reports and plots
"""

from __future__ import annotations

import csv
import os
import platform
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from . import __version__
from .callbacks import BestModelCheckpoint, EpochMetrics
from .checkpoint import CHECKPOINT_NAME, Stateful, TrainingCheckpoint, load_checkpoint, restore_checkpoint
from .config import TrainConfig
from .data import (Images, LoadedData, check_classes, decode_files, load_data, make_dataset, make_train_dataset,
                   split_indices, steps_per_call, train_steps)
from .errors import DataError, ImgclfError
from .files import remove_partial_files, write_csv, write_json
from .metrics import ConfusionMatrix
from .modelio import load_model, save_model
from .models import create_model, get_recipe
from .precision import compute_precision, resolve_precision
from .plots import plot_confusion, plot_history, read_history
from .predict import evaluate_images

RUNS_DIR = Path("runs")
EVAL_BATCH = 256  # validation batch size (no gradients, so larger batches are cheaper)
DATA_INIT_IMAGES = 5000  # training images handed to models with data-dependent initialisation


def train(config: TrainConfig, data: LoadedData | None = None, extra_callbacks: list | None = None) -> Path:
    """Train as `config` says and return the run folder (see README for its contents).

    `data` skips loading (already loaded data); `extra_callbacks` run after imgclf's own.
    """
    return _run(config.resolved(), None, data, extra_callbacks)


def resume(run_dir: str | Path, data: LoadedData | None = None, extra_callbacks: list | None = None,
           verbose: int | None = None) -> Path:
    """Continue an interrupted run from its last completed epoch (RUN_DIR/checkpoint.npz);
    a run killed before its first epoch ended starts again in the same folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ImgclfError(f"cannot resume {run_dir}: not a run folder (no config.json)")
    config = TrainConfig.from_json(run_dir / "config.json")
    if verbose is not None:
        config = config.replace(verbose=verbose)
    return _run(config, run_dir, data, extra_callbacks)


def _run(config: TrainConfig, resume_dir: Path | None, data: LoadedData | None,
         extra_callbacks: list | None) -> Path:
    config.validate()
    precision = resolve_precision(config.precision)
    started = time.perf_counter()
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # process-wide, cannot be undone
    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_data(config)
    labelled = data.labelled
    check_classes(labelled)
    if config.train_on_all:
        if data.test is None:
            raise DataError("train_on_all needs a separate test split (a folder with train/ and test/, or CIFAR-10)")
        train_idx, val_idx = np.arange(len(labelled)), np.array([], dtype=np.int64)
        train_set, val_set = labelled, data.test
    else:
        train_idx, val_idx = split_indices(labelled.labels, config.val_split, config.seed)
        train_set, val_set = labelled.subset(train_idx), labelled.subset(val_idx)
    val_name = "test" if config.train_on_all else "validation"

    checkpoint_state = None
    if resume_dir is None:
        run_dir = make_run_dir(config)
        config = config.replace(precision=precision)  # the run folder records what was used, not "auto"
        write_json(run_dir / "config.json", config.to_dict())
        write_split(run_dir / "split.csv", labelled, train_idx, val_idx)
    else:
        run_dir = resume_dir
        remove_partial_files(run_dir)
        if split_rows(labelled, train_idx, val_idx) != read_split(run_dir / "split.csv"):
            raise DataError(f"cannot resume {run_dir}: the data differs from the run's (split.csv); "
                            "resume needs the same images")
        if (run_dir / CHECKPOINT_NAME).exists():
            checkpoint_state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    write_json(run_dir / "environment.json", environment(config))
    write_json(run_dir / "data.json", {
        "source": data.source,
        "class_names": labelled.class_names,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "val_is": val_name,
        "test_images": len(data.test) if data.test is not None else 0,
        "in_memory": labelled.in_memory,
        "skipped_files": len(labelled.skipped) + (len(data.test.skipped) if data.test is not None else 0),
        "skipped": [{"path": p, "reason": r} for p, r in labelled.skipped],
    })
    if config.verbose:
        print(f"run folder: {run_dir}")
        print(f"data: {data.source}: {len(train_set)} train / {len(val_set)} {val_name} images, "
              f"{len(labelled.class_names)} classes, {'in memory' if labelled.in_memory else 'streamed from disk'}")
    recipe = get_recipe(config.model)
    if config.verbose:
        print(f"model: {config.model} ({recipe.description}), {config.epochs} epochs, batch {config.batch_size}, "
              f"learning rate {config.learning_rate:g}, precision {precision}"
              + (", deterministic" if config.deterministic else ""))
    num_classes = len(labelled.class_names)
    steps_per_epoch = train_steps(len(train_set), config.batch_size)
    with compute_precision(precision):
        pixels = sample_pixels(train_set, seed=config.seed) if recipe.needs_data else None
        model = create_model(config.model, (config.image_size, config.image_size, 3), num_classes,
                             train_pixels=pixels)
        matrix = ConfusionMatrix(num_classes)
        model.compile(
            optimizer=recipe.make_optimizer(config.learning_rate, steps_per_epoch, config.epochs),
            loss=recipe.loss,
            metrics=["accuracy", matrix],
            steps_per_execution=steps_per_call(steps_per_epoch, recipe.steps_per_execution),
        )
        best = BestModelCheckpoint(run_dir / "best_model.keras", labelled.class_names, model_name=config.model)
        history = EpochMetrics(matrix, labelled.class_names, run_dir / "history.csv", epochs=config.epochs,
                               verbose=config.verbose)
        recipe_callbacks = recipe.make_callbacks(steps_per_epoch, config.epochs, pixels) if recipe.make_callbacks else []
        best.set_model(model)
        stateful = {"history": history, "best": best}
        stateful.update({f"recipe{i}": cb for i, cb in enumerate(recipe_callbacks) if isinstance(cb, Stateful)})
        first_epoch = 0
        if checkpoint_state is not None:
            first_epoch = restore_checkpoint(*checkpoint_state, model, stateful)
            if config.verbose:
                print(f"resuming after epoch {first_epoch} of {config.epochs} (best so far: epoch {best.best_epoch})")
        callbacks = [history, *recipe_callbacks, best, *(extra_callbacks or []),
                     TrainingCheckpoint(run_dir / CHECKPOINT_NAME, stateful)]
        if first_epoch < config.epochs:
            model.fit(
                make_train_dataset(train_set, config.batch_size, seed=config.seed, epochs=config.epochs,
                                   first_epoch=first_epoch, augment=recipe.augment),
                steps_per_epoch=steps_per_epoch,
                validation_data=make_dataset(val_set, max(config.batch_size, EVAL_BATCH)),
                epochs=config.epochs,
                initial_epoch=first_epoch,
                shuffle=False,  # the dataset is already in (seed, epoch) order; Keras cannot shuffle it
                callbacks=callbacks,
                verbose=1 if config.verbose and _interactive() else 0,
            )
        save_model(model, run_dir / "last_model.keras", labelled.class_names, model_name=config.model,
                   epoch=config.epochs)
    train_seconds = time.perf_counter() - started

    # With train_on_all there is nothing to select on: the final model is the one to keep.
    final_name = "last_model.keras" if config.train_on_all else "best_model.keras"
    if config.train_on_all:
        shutil.copyfile(run_dir / "last_model.keras", run_dir / "best_model.keras")
    final = load_model(run_dir / final_name)
    report = evaluate_images(final, val_set, tta=config.tta)
    write_reports(run_dir, report, prefix="test_" if config.train_on_all else "")
    metrics = {
        "split": val_name,
        "model_file": final_name,
        "best_epoch": None if config.train_on_all else best.best_epoch,
        **{k: report[k] for k in ("loss", "accuracy", "f1", "precision", "recall", "images", "tta")},
        "train_seconds": round(train_seconds, 1),
        "resumed_after_epoch": first_epoch if resume_dir is not None else None,
        "skipped_files": len(labelled.skipped),
    }
    if data.test is not None and not config.train_on_all:
        test_report = evaluate_images(final, data.test, tta=config.tta)
        write_reports(run_dir, test_report, prefix="test_")
        metrics["test"] = {k: test_report[k] for k in ("loss", "accuracy", "f1", "precision", "recall", "images")}
    write_json(run_dir / "metrics.json", metrics)
    plot_history(read_history(run_dir / "history.csv"), run_dir)
    if config.verbose:
        which = "final model" if config.train_on_all else f"best model (epoch {best.best_epoch})"
        print(f"{which} on {val_name}: accuracy {report['accuracy']:.4f}  "
              f"f1 {report['f1']:.4f}  precision {report['precision']:.4f}  recall {report['recall']:.4f}  "
              f"[{train_seconds:.0f}s]")
        print(f"saved: {run_dir / final_name}")
    return run_dir


def sample_pixels(images: Images, count: int = DATA_INIT_IMAGES, seed: int = 0) -> np.ndarray:
    """A random sample of up to `count` training images as uint8, in random order: the
    images are stored sorted by class, and data-dependent initialisation and BatchNorm
    re-estimation (which reads the sample in batches) need every class in every part."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    if images.in_memory:
        return images.array[chosen]
    pixels, ok, _ = decode_files([images.paths[i] for i in chosen], images.size)
    return pixels[ok]


def write_reports(run_dir: Path, report: dict, prefix: str = "") -> None:
    """per_class.csv, confusion_matrix.csv and its plot, for one evaluated split."""
    names = report["class_names"]
    write_csv(run_dir / f"{prefix}per_class.csv", ["class", "precision", "recall", "f1", "support"],
              [[c["class"], f"{c['precision']:.6f}", f"{c['recall']:.6f}", f"{c['f1']:.6f}", c["support"]]
               for c in report["per_class"]])
    matrix = np.array(report["confusion_matrix"])
    write_csv(run_dir / f"{prefix}confusion_matrix.csv", ["true \\ predicted", *names],
              [[name, *row] for name, row in zip(names, matrix.tolist())])
    plot_confusion(matrix, names, run_dir / f"{prefix}confusion_matrix.png",
                   title="test" if prefix else "validation")


def make_run_dir(config: TrainConfig) -> Path:
    if config.out:
        run_dir = Path(config.out)
    else:
        name = config.name or f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = RUNS_DIR / name
        suffix = 2
        while run_dir.exists():
            run_dir = RUNS_DIR / f"{name}-{suffix}"
            suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


SPLIT_COLUMNS = ["item", "label", "class", "subset"]


def split_rows(images: Images, train_idx: np.ndarray, val_idx: np.ndarray) -> list[list[str]]:
    subset = np.empty(len(images), dtype=object)
    subset[train_idx], subset[val_idx] = "train", "val"
    names = images.names()
    return [[names[i], str(int(images.labels[i])), images.class_names[images.labels[i]], subset[i]]
            for i in range(len(images))]


def write_split(path: Path, images: Images, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    write_csv(path, SPLIT_COLUMNS, split_rows(images, train_idx, val_idx))


def read_split(path: Path) -> list[list[str]] | None:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError:
        return None
    return rows[1:] if rows and rows[0] == SPLIT_COLUMNS else None


def environment(config: TrainConfig) -> dict:
    import matplotlib
    import PIL
    import sklearn
    import tensorflow as tf

    return {
        "imgclf": __version__,
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "seed": config.seed,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _interactive() -> bool:
    return sys.stdout.isatty() or "ipykernel" in sys.modules
