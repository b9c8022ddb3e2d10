"""`imgclf tune`: hyperparameter search with Optuna, resumable after any kill.

A study lives in one folder:

    study.db           Optuna's state (SQLite): every trial, its settings, per-epoch values
    study.json         what the study searches: the data (a digest of its files and labels),
                       the base configuration, the search space
    trials/trial-0007/ one imgclf run folder per trial (history, models, report)
    compare.html/.png/.csv   every trial side by side (`imgclf compare`)
    best_config.json   the best trial's configuration: `imgclf train --config best_config.json`
    best_model.keras   the best trial's kept model

Each trial samples a recipe (among those that fit the data), step size (a multiple of the
recipe's default), batch size, epochs, augmentation, label smoothing, weight decay and EMA
(TPE sampler), trains one run with the data loaded once, and reports each epoch's validation
log-loss to Optuna's median pruner, which stops trials that do worse than the median of the
earlier trials at the same epoch. The objective is the kept model's validation log-loss
(`--objective accuracy`: its accuracy). Validation log-loss is measured without label
smoothing, so trials with and without it compare fairly.

Killed (even by SIGKILL), the same command continues: trials that were running are marked
failed and queued again with the same settings, continuing their run folder from its last
completed epoch, so no trial is lost and none counts twice (`--trials N` counts finished ones:
complete or pruned).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from ..config import TUNE_OBJECTIVES, TrainConfig
from ..data.labelled import LoadedData
from ..data.sources import load_data
from ..errors import ImgclfError
from ..evaluation.compare import compare
from ..models.recipes import BACKBONES, RECIPE_DEFAULTS, cached_weights, check, default_learning_rate
from ..run.atomic import write_json
from ..run.folder import BEST_MODEL, CONFIG, HISTORY, METRICS, RunFolder

STUDY_DB, STUDY_JSON, LOCK = "study.db", "study.json", "tune.lock"
TRIALS = "trials"
BEST_CONFIG = "best_config.json"
OBJECTIVES = dict(zip(TUNE_OBJECTIVES, ("minimize", "maximize")))
FROM_SCRATCH = ("fast-tiny", "fast-small", "fast", "seed")  # searched by default
AUGMENT_CHOICES = ("none", "light", "strong", "recipe,randaugment", "recipe,mixup", "recipe,cutmix",
                   "recipe,erasing")
BATCH_CHOICES = (16, 32, 64, 128, 256)
LR_SCALE = (0.1, 4.0)  # step size: this range of multiples of the recipe's default, log-uniform
EPOCH_SCALE = (0.5, 2.0)  # epochs: this range of multiples of the recipe's default
LABEL_SMOOTHING = (0.0, 0.3)
WEIGHT_DECAY = (1e-6, 1e-2)  # log-uniform, or none
EMA_CHOICES = ("none", "0.9", "0.99")
MAX_FAILURES_IN_A_ROW = 3  # then the study stops: something is wrong beyond one trial's settings
PRUNER_STARTUP_TRIALS = 4  # trials that always run to the end, before pruning starts
PRUNER_WARMUP_EPOCHS = 1  # epochs of each trial before it may be pruned
# settings of a trial that `train --config` must not take from the best trial's config.json
NOT_REPRODUCED = ("out", "name", "overwrite", "verbose")


@dataclass
class TuneResult:
    folder: Path
    finished: int  # complete and pruned trials
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_value: float | None
    best_config: Path | None
    best_model: Path | None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def tune(config: TrainConfig, folder: str | Path, *, trials: int | None = None, minutes: float | None = None,
         models: list[str] | None = None, max_epochs: int | None = None, objective: str = "loss",
         data: LoadedData | None = None) -> TuneResult:
    """Search settings for `config`'s data (its other values are the base every trial starts
    from) until `trials` trials have finished or `minutes` have passed (in all invocations),
    writing the study to `folder`. Run again with the same arguments to continue."""
    import optuna

    if trials is None and minutes is None:
        raise ImgclfError("tune needs --trials N or --minutes M (or both)")
    if trials is not None and trials < 1:
        raise ImgclfError(f"--trials must be at least 1 (got {trials})")
    if minutes is not None and not minutes > 0:
        raise ImgclfError(f"--minutes must be positive (got {minutes})")
    if objective not in OBJECTIVES:
        raise ImgclfError(f"objective must be one of {', '.join(OBJECTIVES)} (got {objective!r})")
    if config.train_on_all:
        raise ImgclfError("tune selects on the validation split, and train_on_all leaves none")
    check(config)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImgclfError(f"{folder} is a file, not a study folder")
    data = data if data is not None else load_data(config)
    candidates = _candidate_models(config, models)
    space = {"models": candidates, "max_epochs": max_epochs, "objective": objective}
    study_info = {"data": data_digest(data), "base_config": _base(config), "space": space}
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        _check_same_study(folder, study_info)
        write_json(folder / STUDY_JSON, study_info)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # imgclf prints a line per trial
        _quiet_retracing()
        storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / STUDY_DB).resolve()}")
        study = optuna.create_study(
            storage=storage, study_name="imgclf", load_if_exists=True,
            direction=OBJECTIVES[objective], sampler=optuna.samplers.TPESampler(seed=config.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=PRUNER_WARMUP_EPOCHS))
        # a continued study draws new settings, not the first run's sequence again
        study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(study.get_trials(deepcopy=False)))
        _requeue_interrupted(study, storage)
        started = time.perf_counter()
        spent = float(study.user_attrs.get("seconds", 0.0))

        def record_time():
            study.set_user_attr("seconds", spent + time.perf_counter() - started)

        deadline = None if minutes is None else started + max(0.0, minutes * 60 - spent)
        runner = _Trial(config, folder, data, candidates, max_epochs, objective, deadline, record_time)
        failures = 0
        try:
            while True:
                done = _finished(study)
                if trials is not None and done >= trials:
                    break
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                study.optimize(runner, n_trials=1, catch=(Exception,))  # a failed trial is one line; go on
                record_time()
                last = study.get_trials(deepcopy=False)[-1]
                failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL and not \
                    last.user_attrs.get("interrupted") else 0
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise ImgclfError(f"{failures} trials in a row failed (the last: "
                                      f"{last.user_attrs.get('failed', 'see above')}); the study stops")
        finally:
            record_time()
        return _summarise(study, folder, objective, spent + time.perf_counter() - started)


def _quiet_retracing() -> None:
    """Every trial builds new models, and TensorFlow warns that it traces new functions: say
    nothing of it (it is what a search does)."""
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)


def data_digest(data: LoadedData) -> dict:
    """What identifies a study's data: its source, classes, image count, and a digest of every
    image's name and label."""
    labelled = data.labelled
    digest = hashlib.sha256()
    for name, label in zip(labelled.names(), labelled.labels.tolist()):
        digest.update(f"{name}\0{label}\n".encode())
    return {"source": data.source, "classes": labelled.class_names, "images": len(labelled),
            "sha256": digest.hexdigest()}


def _base(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in NOT_REPRODUCED}


def _check_same_study(folder: Path, info: dict) -> None:
    path = folder / STUDY_JSON
    if not path.exists():
        if (folder / STUDY_DB).exists():
            raise ImgclfError(f"{folder} has a {STUDY_DB} but no {STUDY_JSON}: not a study imgclf can continue")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ImgclfError(f"{path} is not valid JSON: not a study imgclf can continue") from None
    if old.get("data", {}).get("sha256") != info["data"]["sha256"]:
        was = old.get("data", {})
        raise ImgclfError(f"{folder} holds a study of other data ({was.get('source')}, {was.get('images')} images, "
                          f"classes {', '.join(was.get('classes', []))}); give another folder for this data")
    for key in ("base_config", "space"):
        if old.get(key) != info[key]:
            changed = sorted(k for k in set(old.get(key, {})) | set(info[key])
                             if old.get(key, {}).get(k) != info[key].get(k))
            raise ImgclfError(f"{folder} holds a study with other settings ({', '.join(changed)} differ); continue "
                              "it with the same command, or give another folder")


class _lock:
    """One `tune` per study folder at a time: a lock file with the process id; a stale one
    (its process gone, e.g. killed) is taken over."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK

    def __enter__(self):
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ImgclfError(f"another imgclf tune (process {pid}) is running on {self.path.parent}")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _candidate_models(config: TrainConfig, models: list[str] | None) -> list[str]:
    """The recipes a trial may pick: those given, else the from-scratch recipes and every
    backbone whose ImageNet weights are at hand, all that take images of the data's size."""
    side = min(config.size)
    if models:
        unknown = [m for m in models if m not in RECIPE_DEFAULTS]
        if unknown:
            raise ImgclfError(f"unknown model(s) {', '.join(unknown)} (available: {', '.join(RECIPE_DEFAULTS)})")
        small = [m for m in models if RECIPE_DEFAULTS[m].min_image_size > side]
        if small:
            raise ImgclfError(f"{', '.join(small)} take images of at least {RECIPE_DEFAULTS[small[0]].min_image_size} "
                              f"pixels a side; the data's image_size is {config.image_size}")
        return list(dict.fromkeys(models))
    found = [m for m in FROM_SCRATCH if RECIPE_DEFAULTS[m].min_image_size <= side]
    return found + [m for m in BACKBONES if RECIPE_DEFAULTS[m].min_image_size <= side and cached_weights(m)]


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _requeue_interrupted(study, storage) -> None:
    """Trials left RUNNING by a killed `tune` (the lock says no other runs), or failed by
    Ctrl-C: queue their settings again (continuing their run folder) and mark them failed.
    A trial already queued again (a kill between the two steps) is not queued twice."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        interrupted = trial.state == TrialState.RUNNING or (
            trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"))
        if not interrupted:
            continue
        run = trial.user_attrs.get("run")
        if trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "resume_run": run})
            print(f"trial {trial.number} was interrupted: queued again, continuing {run}", file=sys.stderr)
        if trial.state == TrialState.RUNNING:  # (a finished trial's attributes are read-only)
            storage.set_trial_user_attr(trial._trial_id, "queued_again", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


class _Report(keras.callbacks.Callback):
    """Report each epoch's validation value to the trial (each epoch once) and prune (raise
    TrialPruned) when the pruner says so; at the start of an epoch past the time budget, stop
    (the last epoch's checkpoint is written: a later `tune` continues the trial)."""

    def __init__(self, trial, objective: str, deadline: float | None, record_time):
        super().__init__()
        self.trial, self.objective, self.deadline, self.record_time = trial, objective, deadline, record_time
        self.reported: set[int] = set()
        self.epochs_here = 0  # epochs this process trained of the trial

    def report(self, epoch: int, logs: dict) -> None:
        value = logs.get("val_nll", logs.get("val_loss")) if self.objective == "loss" else logs.get("val_accuracy")
        if value is not None and math.isfinite(value) and epoch not in self.reported:
            self.trial.report(float(value), epoch)
            self.reported.add(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        if self.deadline is not None and time.perf_counter() > self.deadline and self.epochs_here:
            raise _OutOfTime()

    def on_epoch_end(self, epoch, logs=None):
        import optuna

        self.report(epoch + 1, logs or {})
        self.epochs_here += 1
        self.record_time()
        if self.trial.should_prune():
            print(f"trial {self.trial.number}: pruned after epoch {epoch + 1} (worse than the median of earlier "
                  "trials there)", flush=True)
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")


class _OutOfTime(ImgclfError):
    def __init__(self):
        super().__init__("the time budget ran out during this trial; a later tune with more --minutes continues it")


class _Trial:
    """The objective: sample settings, train a run, return its kept model's value."""

    def __init__(self, config, folder, data, candidates, max_epochs, objective, deadline, record_time):
        self.config, self.folder, self.data, self.record_time = config, folder, data, record_time
        self.candidates, self.max_epochs, self.objective, self.deadline = candidates, max_epochs, objective, deadline
        self.said: set[str] = set()  # stderr lines of earlier trials

    def settings(self, trial) -> dict:
        train_images = int(len(self.data.labelled) * (1 - self.config.val_split))
        model = trial.suggest_categorical("model", self.candidates)
        defaults = RECIPE_DEFAULTS[model]
        batches = [b for b in BATCH_CHOICES if b <= max(BATCH_CHOICES[0], train_images // 4)]
        batch = trial.suggest_categorical("batch_size", batches)
        lr_scale = trial.suggest_float("lr_scale", *LR_SCALE, log=True)
        low, high = (max(1, round(defaults.epochs * s)) for s in EPOCH_SCALE)
        if self.max_epochs:
            low, high = min(low, self.max_epochs), min(high, self.max_epochs)
        epochs = trial.suggest_int("epochs", low, high)
        augment = trial.suggest_categorical("augment", AUGMENT_CHOICES)
        smoothing = trial.suggest_float("label_smoothing", *LABEL_SMOOTHING)
        decay = trial.suggest_categorical("weight_decay_on", (False, True))
        weight_decay = trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True) if decay else None
        ema = trial.suggest_categorical("ema", EMA_CHOICES)
        return {"model": model, "batch_size": batch, "learning_rate": default_learning_rate(model, batch) * lr_scale,
                "epochs": epochs, "augment": augment, "label_smoothing": round(smoothing, 4),
                "weight_decay": weight_decay, "ema": 0.0 if ema == "none" else float(ema)}

    def __call__(self, trial) -> float:
        keras.backend.clear_session()  # one process, many models: free them, restart layer names
        name = trial.user_attrs.get("resume_run") or f"{TRIALS}/trial-{trial.number:04d}"
        trial.set_user_attr("run", name)  # relative to the study folder, wherever tune runs from
        run = self.folder / name
        settings = self.settings(trial)
        reporter = _Report(trial, self.objective, self.deadline, self.record_time)
        started = time.perf_counter()
        try:
            with _once_per_study(self.said):
                out = self._run(trial, run, settings, reporter)
        except (KeyboardInterrupt, _OutOfTime) as exc:
            trial.set_user_attr("interrupted", True)  # queued again by the next tune
            if isinstance(exc, _OutOfTime):
                print(f"trial {trial.number}: stopped: {exc}", flush=True)
            raise
        except Exception as exc:
            if isinstance(exc, optuna_pruned()):
                raise
            line = str(exc) if isinstance(exc, ImgclfError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
            trial.set_user_attr("failed", line)
            print(f"trial {trial.number}: failed: {line}", flush=True)
            raise
        metrics = json.loads((Path(out) / METRICS).read_text(encoding="utf-8"))
        value = trial_value(metrics, self.objective)
        print(f"trial {trial.number}: {_describe(settings)}: val accuracy {metrics['accuracy']:.4f}, "
              f"log-loss {trial_value(metrics, 'loss'):.4f} [{time.perf_counter() - started:.0f}s]", flush=True)
        return value

    def _run(self, trial, run: Path, settings: dict, reporter) -> Path:
        from .loop import resume, train

        if (run / CONFIG).exists():  # an interrupted trial's run: continue it
            for row in _history_rows(run):
                reporter.report(int(row["epoch"]), row)
            return resume(run, data=self.data, extra_callbacks=[reporter], verbose=0)
        if run.exists():  # killed before its run folder was written: start it afresh
            shutil.rmtree(run)
        config = self.config.replace(**settings, out=str(run), verbose=0)
        return train(config, data=self.data, extra_callbacks=[reporter])


@contextlib.contextmanager
def _once_per_study(said: set):
    """What training prints to stderr (the recipe's warnings), each line once per study: every
    trial would repeat them."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line not in said:
                said.add(line)
                print(line, file=sys.stderr)


def optuna_pruned():
    import optuna

    return optuna.TrialPruned


def trial_value(metrics: dict, objective: str) -> float:
    """A finished trial's value: its kept model's validation log-loss before calibration (what
    the per-epoch values were), or its accuracy."""
    if objective == "accuracy":
        return float(metrics["accuracy"])
    return float((metrics.get("uncalibrated") or {}).get("nll", metrics["loss"]))


def _history_rows(run: Path) -> list[dict]:
    """history.csv's rows as {column: value} (none before the run's first epoch)."""
    folder = RunFolder(run)
    if not (run / HISTORY).exists():
        return []
    history = folder.read_history()
    return [{key: float(values[i]) for key, values in history.items()} for i in range(len(history.get("epoch", ())))]


def _describe(settings: dict) -> str:
    parts = [settings["model"], f"lr {settings['learning_rate']:.3g}", f"batch {settings['batch_size']}",
             f"{settings['epochs']} epochs", f"augment {settings['augment']}",
             f"smoothing {settings['label_smoothing']:g}"]
    if settings["weight_decay"]:
        parts.append(f"wd {settings['weight_decay']:.2g}")
    if settings["ema"]:
        parts.append(f"ema {settings['ema']:g}")
    return ", ".join(parts)


def _summarise(study, folder: Path, objective: str, seconds: float) -> TuneResult:
    """compare.html over every trial's run, the best trial's config and model."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    runs = [folder / t.user_attrs["run"] for t in trials if t.user_attrs.get("run") and t.state in (
        TrialState.COMPLETE, TrialState.PRUNED) and (folder / t.user_attrs["run"] / CONFIG).exists()]
    rows = compare(runs, folder, title=f"imgclf tune: {len(runs)} trials")["rows"] if runs else []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_config = best_model = None
    best = study.best_trial if complete else None
    if best is not None:
        run = folder / best.user_attrs["run"]
        config = json.loads((run / CONFIG).read_text(encoding="utf-8"))
        best_config = folder / BEST_CONFIG
        write_json(best_config, {k: v for k, v in config.items() if k not in NOT_REPRODUCED})
        best_model = folder / BEST_MODEL
        shutil.copyfile(run / BEST_MODEL, best_model)
    return TuneResult(folder, counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], counts[TrialState.COMPLETE],
                      counts[TrialState.PRUNED], counts[TrialState.FAIL], best.number if best else None,
                      best.value if best else None, best_config, best_model, rows, seconds)
