"""Training: config in, run folder out.

    data -> stratified split -> run folder -> model -> fit (per-epoch metrics, best-model
    checkpoint, resumable state) -> final evaluation of the kept model -> reports and plots
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ..config import AUTO, TrainConfig
from ..data.check import quick_check
from ..data.labelled import Images, LoadedData
from ..data.sources import load_data
from ..data.split import check_classes, split_indices
from ..errors import DataError, ImgclfError, StorageError
from ..evaluation.calibrate import fit as fit_temperature
from ..evaluation.calibrate import save_calibrated
from ..evaluation.evaluate import REPORT_KEYS, report_kept_model, summary_metrics
from ..evaluation.report import write_history_plots, write_html_report
from ..inference.modelio import LoadedModel, load_model
from ..models.recipes import check, outside_tuning, pick_recipe, recipe_defaults, resolve
from ..models.registry import get_recipe
from ..run.folder import RunFolder
from .budget import BUDGET_FILE, BudgetPlan, TimeBudgetGuard
from .budget import plan as plan_budget
from .distribute import (
    is_chief,
    make_strategy,
    replicas,
    strategy_name,
    worker_position,
)
from .fit import Fitted, fit, plan_phases
from .hardware import available_memory, environment
from .precision import compute_precision, resolve_precision
from .tracking import MlflowLog, check_mlflow
from .transfer import init_recipe


def train(config: TrainConfig, data: LoadedData | None = None, extra_callbacks: list | None = None,
          started: float | None = None) -> Path | None:
    """Train as `config` says and return the run folder (see `runfolder` for its contents);
    None on the workers of a multi-worker run but the chief, which write nothing.

    `data` skips loading (already loaded data); `extra_callbacks` run after imgclf's own;
    `started`: the time.perf_counter() the run's clock (the time budget's, the reported time)
    counts from, default this call (the CLI passes its own start, so that its imports count).
    """
    return _run(config, None, data, extra_callbacks, started)


def resume(run_dir: str | Path, data: LoadedData | None = None, extra_callbacks: list | None = None,
           verbose: int | None = None, started: float | None = None) -> Path | None:
    """Continue an interrupted run from its last completed epoch (its checkpoint); a run
    killed before its first epoch ended starts again in the same folder. `started` as for `train`."""
    run = RunFolder.existing(run_dir)
    config = run.read_config()
    if config.ema is None:  # its config is resolved: written before recipes had an EMA default, none
        config = config.replace(ema=0.0)
    if verbose is not None:
        config = config.replace(verbose=verbose)
    return _run(config, run, data, extra_callbacks, started)


@dataclass
class Split:
    labelled: Images  # everything labelled, in source order (what split.csv lists)
    train_idx: np.ndarray  # indices into `labelled`
    val_idx: np.ndarray
    train: Images
    val: Images  # the validation split, or the test split with train_on_all
    val_name: str  # "validation" or "test"


def _run(config: TrainConfig, resumed: RunFolder | None, data: LoadedData | None,
         extra_callbacks: list | None, started: float | None = None) -> Path | None:
    check(config)  # the config and its recipe, before anything is loaded
    if config.mlflow:
        check_mlflow(config.mlflow)  # an unreachable tracking URI fails now, in seconds
    strategy = make_strategy(config.distribute)  # first: multi-worker collectives start with it
    if config.time_budget and replicas(strategy) > 1:  # each would time and stop on its own clock
        raise ImgclfError("time_budget times the run on one device; with several, give --epochs instead")
    with _op_determinism(config.deterministic):
        if is_chief(strategy):
            return _train(config, strategy, resumed, data, extra_callbacks, started)
        with _private_folder(config, resumed) as (config, resumed):
            _train(config, strategy, resumed, data, extra_callbacks, started)
    return None


@contextmanager
def _private_folder(config: TrainConfig, resumed: RunFolder | None):
    """(config, resumed) for a worker that is not the chief: it runs the chief's code (the
    collectives must match) but writes to a temporary folder, deleted at the end. A resumed
    worker starts from a copy of the chief's run folder (shared storage, as Keras'
    BackupAndRestore also needs)."""
    private = Path(tempfile.mkdtemp(prefix="imgclf-worker-"))
    try:
        if resumed is not None:
            yield config, RunFolder(shutil.copytree(resumed.path, private / "run"))
        else:
            yield config.replace(out=str(private / "run")), None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _train(config: TrainConfig, strategy, resumed: RunFolder | None, data: LoadedData | None,
           extra_callbacks: list | None, started: float | None = None) -> Path | None:
    chief = is_chief(strategy)
    if resumed is None:
        RunFolder.check_free(config)  # before any loading: an earlier run is never overwritten
    check_input_memory(config)
    precision = resolve_precision(config.precision)
    started = time.perf_counter() if started is None else started
    keras.utils.set_random_seed(config.seed)
    if config.init and resumed is None:
        config = config.replace(model=init_recipe(config.init))  # the source's recipe
    data = data if data is not None else load_data(config)
    split = split_data(data, config)
    if config.model == AUTO:
        config = _pick_recipe(config, len(split.train))
    # the recipe's defaults, the batch fitted to the data (global: per device x replicas)
    config = resolve(config, len(split.train), replicas=replicas(strategy))
    config = _split_batch(config, len(split.train), replicas(strategy))
    config = _resolve_class_weight(config, split)
    _warn_outside_tuning(config, len(split.train), resumed)
    if resumed is None and chief:
        quick_check(split.train, split.val)  # imbalance, identical files on both sides of the split
    recipe = get_recipe(config.model)
    budget = None
    if config.time_budget and resumed is None:  # the epochs it buys, timed here (a resume keeps the plan)
        config, budget = _plan_budget(config, precision, recipe, data, split, strategy, started)
    run, checkpoint = _open_run_folder(config.replace(precision=precision), split, resumed)
    if budget is not None:
        run.write_json(BUDGET_FILE, budget.to_dict())
    elif config.time_budget and run.read_json(BUDGET_FILE):
        budget = BudgetPlan.from_dict(run.read_json(BUDGET_FILE))
    run.write_environment(environment(config.seed))
    run.write_data_summary(_data_summary(data, split))
    _announce(config, precision, run, data, split, strategy)
    if budget is not None and config.verbose:
        print(budget.line())
    mlflow = MlflowLog(config, run, resumed is not None) if config.mlflow and chief else None
    guard = None
    if budget is not None:  # a fine-tuning run's phases have their own schedules: they cannot move
        guard = TimeBudgetGuard(budget, started, verbose=bool(config.verbose), movable=plan_phases(config)[0][0] == 0)
    try:
        with compute_precision(precision), strategy.scope():
            try:
                fitted = fit(config, recipe, run, split.train, split.val, split.labelled.class_names, checkpoint,
                             list(extra_callbacks or []) + ([mlflow] if mlflow else []),
                             guard)
            except StorageError as exc:  # disk full mid-run: every file written so far is whole
                raise StorageError(exc.reason, exc.path, f"{exc.kept}; the run continues from its last completed "
                                                         f"epoch with --resume {run}") from None
        if not chief:
            return None
        _finish(config, run, data, split, fitted, started, resumed, guard)
    except BaseException:
        if mlflow:
            mlflow.finish("KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
        raise
    if mlflow:
        mlflow.finish()
    return run.path


def _finish(config: TrainConfig, run: RunFolder, data: LoadedData, split: Split, fitted: Fitted, started: float,
            resumed: RunFolder | None, guard: TimeBudgetGuard | None = None) -> None:
    """After the fit, on the chief: keep, calibrate and evaluate the final model; write
    metrics.json, the plots and the report."""
    train_seconds = time.perf_counter() - started
    final_name = _keep_final_model(config, run)
    calibration, calibrated = _calibrate(config, run, split)
    metrics, report = _final_evaluation(config, run, final_name, data, split, fitted, train_seconds, resumed,
                                        *(calibrated or ()))
    if calibration is not None:
        metrics["calibration"] = report["calibration"] = calibration
    if config.patience is not None:
        metrics["early_stopping"] = {"patience": config.patience, "min_delta": config.min_delta,
                                     "stopped_after_epoch": fitted.stopped_epoch if fitted.stopped_by == "patience"
                                     else None, "epochs_run": fitted.epochs_run}
    if guard is not None:
        metrics["time_budget"] = {**guard.plan.to_dict(), "epochs_run": fitted.epochs_run,
                                  "shrunk_to_epochs": guard.epochs if guard.epochs < guard.planned else None,
                                  "grown_to_epochs": guard.epochs if guard.epochs > guard.planned else None,
                                  "stopped_after_epoch": fitted.stopped_epoch if fitted.stopped_by == "time_budget"
                                  else None, "seconds_so_far": round(time.perf_counter() - started, 1)}
    run.write_metrics(metrics)
    write_history_plots(run)
    write_html_report(run, report, title=f"{config.model} run {run.path.name}",
                      prefix="test_" if config.train_on_all else "")
    _print_result(config, run, final_name, split, fitted, report, train_seconds)


PIPELINE_BATCHES = 3  # batches alive at once in the input pipeline: one decoded, one prefetched, one in the model


def _plan_budget(config: TrainConfig, precision: str, recipe, data: LoadedData, split: Split, strategy,
                 started: float) -> tuple[TrainConfig, BudgetPlan]:
    """--time-budget: (the config with the epochs the budget buys on this machine, the plan)."""
    test_images = len(data.test) if data.test is not None and not config.train_on_all else 0
    with compute_precision(precision), strategy.scope():
        budget = plan_budget(config, recipe, split.train, split.val, len(split.labelled.class_names),
                             started=started, test_images=test_images)
    return config.replace(epochs=budget.epochs), budget


def check_input_memory(config: TrainConfig) -> None:
    """Refuse, before anything is loaded, an image size whose input pipeline cannot fit in the
    memory available: PIPELINE_BATCHES batches of uint8 and float32 pixels."""
    height, width = config.size
    batch = config.batch_size or (recipe_defaults(config.model).batch_size if config.model != AUTO else 1)
    need = PIPELINE_BATCHES * batch * height * width * 3 * (1 + 4)
    available = available_memory()
    if available is not None and need > available:
        raise DataError(f"image_size {height}x{width} with batches of {batch}: the input pipeline alone needs "
                        f"{need / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of memory available; "
                        "use a smaller --image-size or --batch-size")


@contextmanager
def _op_determinism(on: bool):
    """TensorFlow's op determinism, on for this run only. The switch is process-wide: left on,
    a deterministic run would make every later run of the same process (a notebook's, a
    test's) deterministic too, and leave tf.data's cache of their validation batches
    unfinished. Turned off again at the end unless it was already on."""
    if not on:
        yield
        return
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # is_enabled, disable: not under tf.config

    was_on = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()


def split_data(data: LoadedData, config: TrainConfig) -> Split:
    """The training and validation splits (or, with train_on_all, everything and the test split)."""
    labelled = data.labelled
    check_classes(labelled)
    if config.train_on_all:
        if data.test is None:
            raise DataError("train_on_all needs a separate test split (a folder with train/ and test/, or CIFAR-10)")
        return Split(labelled, np.arange(len(labelled)), np.array([], dtype=np.int64), labelled, data.test, "test")
    train_idx, val_idx = split_indices(labelled.labels, config.val_split, config.data_seed)
    return Split(labelled, train_idx, val_idx, labelled.subset(train_idx), labelled.subset(val_idx), "validation")


def _split_batch(config: TrainConfig, train_images: int, devices: int) -> TrainConfig:
    """With several replicas every training batch must split evenly between them (an uneven
    split fails inside TensorFlow, docs/distribute.md): the batch is a multiple of the
    replicas, and no larger than the training set rounded down to one."""
    if devices == 1:
        return config
    if config.batch_size % devices:
        raise DataError(f"batch size {config.batch_size} does not split evenly between {devices} replicas; "
                        f"use a multiple of {devices}")
    fitting = train_images // devices * devices
    if config.batch_size > fitting >= devices:
        return config.replace(batch_size=fitting)
    return config


def _pick_recipe(config: TrainConfig, train_images: int) -> TrainConfig:
    """--model auto: the recipe `pick_recipe` chooses for this data, said with its reason."""
    name, why = pick_recipe(train_images, config.size, config.weights)
    print(f"--model auto: {name}, because {why}", file=sys.stderr)
    return config.replace(model=name, weights=config.weights if recipe_defaults(name).backbone else None)


def _resolve_class_weight(config: TrainConfig, split: Split) -> TrainConfig:
    """--class-weight as {class name: weight} (what config.json keeps): "balanced" is
    scikit-learn's n_images / (n_classes * images of the class), on the training split."""
    names = split.labelled.class_names
    if config.class_weight in (None, "none"):
        return config.replace(class_weight=None)
    if config.class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight("balanced", classes=np.arange(len(names)), y=split.train.labels)
        return config.replace(class_weight={name: round(float(w), 6) for name, w in zip(names, weights)})
    given = config.class_weights()
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DataError(f"class_weight names classes that are not in the data: {', '.join(unknown)}")
    return config.replace(class_weight={name: float(given.get(name, 1.0)) for name in names})


def _warn_outside_tuning(config: TrainConfig, train_images: int, resumed: RunFolder | None) -> None:
    notes = outside_tuning(recipe_defaults(config.model), train_images, max(config.size))
    if notes and resumed is None:
        print(f"warning: the {config.model} recipe was tuned for other data than this run's: {'; '.join(notes)}; "
              "its defaults may not suit it", file=sys.stderr)


def _split_rows(split: Split) -> list[dict[str, str]]:
    """split.csv's rows: item, label, class and subset of every labelled image."""
    images = split.labelled
    subset = np.empty(len(images), dtype=object)
    subset[split.train_idx], subset[split.val_idx] = "train", "val"
    names = images.names()
    return [{"item": names[i], "label": str(int(images.labels[i])), "class": images.class_names[images.labels[i]],
             "subset": subset[i]} for i in range(len(images))]


def _open_run_folder(config: TrainConfig, split: Split, resumed: RunFolder | None):
    """A new run folder with its config and split; or the resumed one, checked against the
    data, with its checkpoint's state (None before the first completed epoch)."""
    if resumed is None:
        run = RunFolder.create(config)
        run.write_config(config)  # the precision used, not "auto"
        run.write_split(_split_rows(split))
        return run, None
    resumed.remove_partial_files()
    if _split_rows(split) != resumed.read_split():
        raise DataError(f"cannot resume {resumed}: the data differs from the run's (split.csv); "
                        "resume needs the same images")
    return resumed, resumed.read_checkpoint()


def _data_summary(data: LoadedData, split: Split) -> dict:
    labelled = data.labelled
    return {
        "source": data.source,
        "class_names": labelled.class_names,
        "train_images": len(split.train),
        "val_images": len(split.val),
        "val_is": split.val_name,
        "test_images": len(data.test) if data.test is not None else 0,
        "in_memory": labelled.in_memory,
        "cwd": os.getcwd(),  # relative paths in split.csv are relative to this folder
        "skipped_files": len(labelled.skipped) + (len(data.test.skipped) if data.test is not None else 0),
        "skipped": [{"path": p, "reason": r} for p, r in labelled.skipped],
    }


def _announce(config: TrainConfig, precision: str, run: RunFolder, data: LoadedData, split: Split,
              strategy) -> None:
    if not config.verbose:
        return
    devices = replicas(strategy)
    index, workers = worker_position(strategy)
    if index:
        print(f"worker {index} of {workers}: training with the chief (worker 0), which writes the run folder")
    else:
        print(f"run folder: {run}")
    print(f"data: {data.source}: {len(split.train)} train / {len(split.val)} {split.val_name} images, "
          f"{len(split.labelled.class_names)} classes, "
          f"{'in memory' if split.labelled.in_memory else 'streamed from disk'}")
    if devices > 1:
        print(f"devices: {devices} replicas ({strategy_name(strategy)}"
              + (f", {workers} workers reading a shard each" if workers > 1 else "")
              + f"), {config.batch_size // devices} images each per step")
    print(f"model: {config.model} ({recipe_defaults(config.model).description}), {config.epochs} epochs, "
          f"batch {config.batch_size}, learning rate {config.learning_rate:g}, precision {precision}"
          + (", deterministic" if config.deterministic else ""))
    extras = [f"augment {config.augment}", f"label smoothing {config.label_smoothing:g}"]
    extras += [f"EMA {config.ema:g}"] if config.ema else []
    extras += [f"weight decay {config.weight_decay:g}"] if config.weight_decay else []
    extras += [f"early stop after {config.patience} epochs without improvement"] if config.patience else []
    print("regularisation: " + ", ".join(extras))
    if config.class_weight:
        print("class weights: " + ", ".join(f"{name} {w:.3g}" for name, w in config.class_weight.items()))
    if config.freeze_epochs:
        print(f"fine-tuning: {min(config.freeze_epochs, config.epochs)} epoch(s) of the head on the frozen "
              f"{config.weights} backbone, then {config.unfreeze} block(s) unfrozen at {config.backbone_lr:g}x "
              "the step size")


def _keep_final_model(config: TrainConfig, run: RunFolder) -> str:
    """The file of the model to keep: the best epoch's; with train_on_all there is nothing to
    select on, so the last model is kept (and copied to best_model.keras)."""
    if config.train_on_all:
        run.keep_last_as_best()
        return run.last_model.name
    return run.best_model.name


NOT_CALIBRATED_ON_ALL = ("not calibrated: --train-on-all leaves no validation split to fit a temperature on (the "
                         "test split only measures); calibrate it on other labelled images with imgclf calibrate")


def _calibrate(config: TrainConfig, run: RunFolder, split: Split) -> tuple[dict | None, tuple | None]:
    """Fit the kept model's temperature on the validation split and put it into the model
    (`evaluation.calibrate`): (what it did, for metrics.json; (the calibrated model as saved,
    its probabilities of the validation split's views)). (None, None) with --calibrate none."""
    if config.calibrate == "none":
        return None, None
    if config.train_on_all:
        if config.verbose:
            print(NOT_CALIBRATED_ON_ALL)
        return {"skipped": NOT_CALIBRATED_ON_ALL}, None
    loaded = load_model(run.best_model)
    calibration = fit_temperature(loaded, split.val, tta=config.tta, source="the validation split")
    calibrated = save_calibrated(loaded, calibration, run.best_model)
    if config.verbose:
        print(calibration.line())
    return calibration.to_dict(), (calibrated, calibration.views)


def _final_evaluation(config: TrainConfig, run: RunFolder, final_name: str, data: LoadedData, split: Split,
                      fitted: Fitted, train_seconds: float, resumed: RunFolder | None,
                      final: LoadedModel | None = None, views: list | None = None):
    """Evaluate the kept model (`final`, else read from its file; `views`: its probabilities of
    the validation split, already computed) on the validation split (and on the test split, if
    separate); write their reports; return (metrics.json's content, the validation report)."""
    final = final or load_model(run.path / final_name)
    report = report_kept_model(run, final, split.val, tta=config.tta, prefix="test_" if config.train_on_all else "",
                               views=views)
    metrics = {
        "split": split.val_name,
        "model_file": final_name,
        "best_epoch": None if config.train_on_all else fitted.best.best_epoch,
        **{k: report[k] for k in (*REPORT_KEYS, "tta")},
        **summary_metrics(report),
        "train_seconds": round(train_seconds, 1),
        "resumed_after_epoch": fitted.first_epoch if resumed is not None else None,
        "skipped_files": len(data.labelled.skipped),
    }
    if data.test is not None and not config.train_on_all:
        test_report = report_kept_model(run, final, data.test, tta=config.tta, prefix="test_")
        metrics["test"] = {**{k: test_report[k] for k in REPORT_KEYS}, **summary_metrics(test_report)}
        metrics["test"]["per_class_recall"] = {c["class"]: c["recall"] for c in test_report["per_class"]}
    return metrics, report


def _print_result(config: TrainConfig, run: RunFolder, final_name: str, split: Split, fitted: Fitted,
                  report: dict, train_seconds: float) -> None:
    if not config.verbose:
        return
    which = "final model" if config.train_on_all else f"best model (epoch {fitted.best.best_epoch})"
    print(f"{which} on {split.val_name}: accuracy {report['accuracy']:.4f}  "
          f"f1 {report['f1']:.4f}  precision {report['precision']:.4f}  recall {report['recall']:.4f}  "
          f"[{train_seconds:.0f}s]")
    print(f"saved: {run.path / final_name}")
