"""Command line: `imgclf train | predict | evaluate | calibrate | explain | export | serve | bench | ...`.
It parses arguments, calls the Python API and prints; errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import (
    BENCH_CONTENDERS,
    EXPORT_FORMATS,
    TUNE_OBJECTIVES,
    ServeLimits,
    TrainConfig,
    min_confidence_value,
)
from .errors import ImgclfError, resource_error
from .models.recipes import BACKBONES, INIT_BACKBONE_LR, INIT_FREEZE_EPOCHS, RECIPE_DEFAULTS

EXIT_ERROR = 1  # the command ran and failed (bad data, bad model file, ...)
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_INTERRUPTED = 130  # Ctrl-C
TTA_HELP = "test-time augmentation (average over the mirror image and 1-pixel shifts)"
MODEL_HELP = "saved model (.keras) or an export of one (SavedModel folder, .onnx, .tflite)"
KERAS_MODEL_HELP = "saved model (.keras)"
UNSET = argparse.SUPPRESS  # option not given: leave the key out, so TrainConfig's default applies
MIN_CONFIDENCE_HELP = ("answer 'uncertain' for images whose top probability is below P (0 < P < 1); the top "
                       "classes are still listed")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# TrainConfig's fields that are options (those with help), and the ones that pick the data
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)
DATA_KEYS = ("dataset", "data_dir", "labels", "limit")
IMAGE_KEYS = ("image_size", "resize")
BENCH_KEYS = (*DATA_KEYS, *IMAGE_KEYS, "seed")
TUNE_KEYS = (*DATA_KEYS, *IMAGE_KEYS, "val_split", "memory_limit_mb", "cache", "precision", "seed", "patience",
             "min_delta", "calibrate")
LR_FIND_KEYS = (*DATA_KEYS, *IMAGE_KEYS, "val_split", "memory_limit_mb", "model", "weights", "batch_size", "precision",
                "seed", "augment", "label_smoothing", "weight_decay")


def add_config_options(parser: argparse.ArgumentParser, keys: typing.Iterable[str]) -> None:
    """An option for each of these TrainConfig fields, made from the field's metadata (help,
    flag, metavar, choices, type, group) and type. An option not given leaves its key out
    (UNSET), so TrainConfig's default applies."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    values = _help_values()
    groups: dict[str, Any] = {}
    for key in keys:
        field = fields[key]
        meta = field.metadata
        group = meta.get("group")
        if group and group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group] if group else parser
        option: dict[str, Any] = {"dest": key, "default": UNSET,
                                  "help": meta["help"].format(default=field.default, **values)}
        if hints[key] is bool:
            option.update(action="store_const", const=True)
        else:
            option["type"] = _argument_type(meta["type"]) if "type" in meta else _value_type(hints[key])
            option.update({name: meta[name] for name in ("metavar", "choices", "nargs", "const") if name in meta})
        target.add_argument(meta.get("flag", "--" + key.replace("_", "-")), **option)


def _value_type(hint: Any) -> Callable[[str], Any]:
    """int or float where the field takes one, else the text."""
    allowed = typing.get_args(hint) or (hint,)
    return next((typ for typ in (int, float) if typ in allowed), str)


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A field's own parser as an argparse type: its ImgclfError becomes argparse's one line."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ImgclfError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _help_values() -> dict[str, Any]:
    """What the options' help names from the recipe table (config.py cannot read it)."""
    backbone = RECIPE_DEFAULTS[BACKBONES[0]]
    return {"recipes": ", ".join(RECIPE_DEFAULTS), "recipe_epochs": _model_defaults("epochs"),
            "recipe_batch_size": _model_defaults("batch_size"), "backbone_freeze_epochs": backbone.freeze_epochs,
            "backbone_backbone_lr": backbone.backbone_lr, "init_freeze_epochs": INIT_FREEZE_EPOCHS,
            "init_backbone_lr": INIT_BACKBONE_LR, "recipe_label_smoothing": _grouped_defaults("label_smoothing"),
            "recipe_ema": _grouped_defaults("ema")}


def build_parser() -> Parser:
    parser = Parser(prog="imgclf", description="Train, measure, keep and use CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = commands.add_parser("train", help="train a model; writes a run folder",
                            description="Train a model and write a run folder (models, metrics, plots).")
    add_config_options(p, TRAIN_KEYS)
    p.add_argument("--workers", metavar="HOST:PORT,HOST:PORT,...",
                   help="multi-worker training: every worker's address, the same list on each machine "
                        "(sets TF_CONFIG and --distribute multi-worker)")
    p.add_argument("--worker-index", type=int, default=0, metavar="I",
                   help="with --workers: this machine's place in the list (0 is the chief, which writes the run)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last completed epoch, with its own configuration")
    p.add_argument("--config", help="JSON file of configuration keys; command-line options given override it")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = commands.add_parser("lr-find", help="the learning-rate range test: a plot and a suggested step size",
                            description="Train the recipe for a few hundred steps while its step size grows "
                                        "exponentially; write the loss curve and suggest train --learning-rate.")
    add_config_options(p, LR_FIND_KEYS)
    p.add_argument("--out", required=True, help="folder for lr_find.png, lr_find.csv and lr_find.json")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps of the sweep (default: %(default)s)")
    p.add_argument("--config", help="JSON file of configuration keys (a train --config file)")

    p = commands.add_parser("compare", help="compare run folders: one table, their validation curves overlaid",
                            description="Compare run folders: a table (recipe, settings, best epoch, accuracy, F1, "
                                        "ECE, time) and their validation curves, as CSV, PNG and one HTML file.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default="compare", help="folder for compare.csv, compare.png and compare.html "
                                                    "(default: %(default)s)")

    p = commands.add_parser("tune", help="search training settings with Optuna (resumable)",
                            description="Search recipe, step size, batch size, epochs, augmentation, label smoothing, "
                                        "weight decay and EMA with Optuna; each trial is a run folder in the study "
                                        "folder; run the same command again to continue a stopped study.")
    add_config_options(p, TUNE_KEYS)
    p.add_argument("--out", required=True, metavar="STUDY_DIR",
                   help="study folder: study.db (Optuna's SQLite), trials/, compare.html, best_config.json, "
                        "best_model.keras")
    p.add_argument("--trials", type=int, metavar="N", help="stop when N trials have finished (complete or pruned)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="stop after M minutes, all runs of the study together (a trial still running then stops "
                        "between two epochs; a later tune with more minutes continues it)")
    p.add_argument("--models", metavar="LIST", help="recipes to search, comma-separated (default: every "
                                                     "from-scratch recipe, and backbones whose weights are at hand)")
    p.add_argument("--max-epochs", type=int, metavar="N", help="cap every trial's epochs")
    p.add_argument("--objective", choices=TUNE_OBJECTIVES, default="loss",
                   help="what the best trial has: the lowest validation log-loss or the highest accuracy "
                        "(default: %(default)s)")
    p.add_argument("--config", help="JSON file of configuration keys: the base every trial starts from")

    p = commands.add_parser("predict", help="predict the class of images",
                            description="Predict the class of image files, folders or globs.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--top-k", type=int, default=1, help="show the K most likely classes (default: %(default)s)")
    p.add_argument("--output", help="also write the predictions to a .csv or .json file")
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    add_min_confidence(p)
    add_unsafe(p)

    p = commands.add_parser("evaluate", help="measure a saved model on labelled data",
                            description="Accuracy, F1, precision, recall, per-class table and confusion matrix.")
    p.add_argument("model", help=MODEL_HELP)
    add_config_options(p, DATA_KEYS)
    p.add_argument("--out", help="folder for the report (report.html, metrics.json, per_class.csv, "
                                 "misclassified.csv, figures)")
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument("--min-confidence", type=_argument_type(min_confidence_value), metavar="P",
                   help="also measure answering 'uncertain' below top probability P: the share of images answered "
                        "(coverage) and the accuracy on them")
    p.add_argument("--target-accuracy", type=_argument_type(_target_accuracy), metavar="A",
                   help="print the confidence threshold whose answers reach accuracy A on this data, and the "
                        "coverage it leaves")
    add_unsafe(p)

    p = commands.add_parser("calibrate", help="calibrate a model's probabilities (temperature scaling)",
                            description="Fit one temperature on labelled images (minimising the log-loss of "
                                        "softmax(log p / T)) and write a new .keras model that includes it, so it "
                                        "and every export of it give calibrated probabilities; the class ranking "
                                        "does not change. Without --data-dir or --labels: the run's validation split.")
    p.add_argument("model", help=KERAS_MODEL_HELP)
    add_config_options(p, DATA_KEYS)
    p.add_argument("--out", help="the calibrated model (.keras; default: beside the input, "
                                 "NAME.calibrated.keras); never the input itself")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--tta", action="store_true", help="fit to the test-time-augmented probabilities")
    add_unsafe(p)

    p = commands.add_parser("explain", help="Grad-CAM heatmaps: where in each image the model looked",
                            description="For each image, the image with the Grad-CAM heatmap of the predicted class "
                                        "(or --class) over it (NAME.gradcam.png), explanations.csv (the "
                                        "predictions) and heatmaps.npz (the raw heatmaps at the model's input size, "
                                        "keyed by file name).")
    p.add_argument("model", help=KERAS_MODEL_HELP)
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="folder for the overlays, explanations.csv and heatmaps.npz")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="explain this class instead of the predicted one")
    add_unsafe(p)

    p = commands.add_parser("report", help="write a run's HTML report (report.html) again",
                            description="Evaluate a run's best model on its validation split and write report.html: "
                                        "learning curves, metrics, per-class table, confusion matrix, calibration, "
                                        "misclassified images, configuration and environment. Training writes it too.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder")
    add_unsafe(p)

    p = commands.add_parser("check-data", help="check a dataset: class balance, broken files, duplicates",
                            description="Images per class and the imbalance ratio, undecodable files, identical "
                                        "files (within a split, across train/test, with different labels), "
                                        "near-duplicates (perceptual hash), sizes and colour modes. Exits non-zero "
                                        "on problems that would stop training.")
    p.add_argument("source", metavar="DIR|CSV", help="a folder with one subfolder per class, or a path,label CSV")
    p.add_argument("--json", metavar="FILE", help="also write the findings as JSON")
    p.add_argument("--near-bits", type=int, default=None,
                   help="perceptual hashes at most this many bits apart (of 64) are near-duplicates (default: 4)")
    p.add_argument("--no-near", action="store_true", help="skip the near-duplicate search (no perceptual hashes)")

    p = commands.add_parser("export", help="export a saved model to SavedModel, ONNX or LiteRT, checked against Keras",
                            description="Export a .keras model to another runtime, then load the export in that "
                                        "runtime and check it predicts what Keras does on the run's validation "
                                        "images (or --check-data); a failed check deletes the export.")
    p.add_argument("model", help="saved model (.keras), normally in its run folder")
    p.add_argument("--format", required=True, nargs="+", choices=EXPORT_FORMATS + ("all",),
                   help="one or more of %(choices)s")
    p.add_argument("--out", help="output path (default: beside the model, e.g. best_model.onnx); one format only")
    p.add_argument("--check-data", metavar="DIR",
                   help="images to check the export on (default: the run's validation split)")
    p.add_argument("--calibration-data", metavar="DIR",
                   help="images for int8 quantization (default: the run's training split)")
    add_unsafe(p)

    p = commands.add_parser("serve", help="serve a model over HTTP (predictions, metadata, a web page)",
                            description="An HTTP prediction service: POST /predict, GET /health, GET /metadata, "
                                        "a web page at / and the API docs at /docs.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port, 0 for any free one (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with the model (default: 1)")
    limits = ServeLimits()
    p.add_argument("--max-upload-mb", type=float, default=limits.max_body_mb,
                   help="largest request body in MB (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=limits.max_images,
                   help="most images per request (default: %(default)s)")
    p.add_argument("--max-megapixels", type=float, default=limits.max_megapixels,
                   help="largest image accepted, in millions of pixels (default: %(default)s)")
    add_min_confidence(p)

    p = commands.add_parser("bench-serve", help="benchmark prediction: every runtime in-process, and over HTTP",
                            description="Latency of one image in Keras predict, a compiled function, SavedModel, "
                                        "ONNX Runtime and LiteRT (float, int8); HTTP latency and throughput with "
                                        "1 and 8 clients; 1,000 mixed good and bad requests; file sizes.")
    p.add_argument("models", nargs="+", help="saved models (.keras) in their run folders")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per runtime (default: %(default)s)")
    p.add_argument("--http-requests", type=int, default=400, help="timed HTTP requests per setting "
                                                                   "(default: %(default)s)")
    p.add_argument("--mixed", type=int, default=1000, help="good and bad requests (default: %(default)s)")
    p.add_argument("--out", default="bench_serve_out", help="folder for bench_serve.json (default: %(default)s)")

    p = commands.add_parser("bench", help="benchmark training: notebook vs imgclf reference vs fast recipe",
                            description="Train (a) the seed model as a notebook would, (b) imgclf's reference "
                                        "recipe, (c) the fast recipe, side by side on the same data and split.")
    add_config_options(p, BENCH_KEYS)
    p.add_argument("--epochs", type=int, default=1, help="epochs for (a) and (b) (default: %(default)s)")
    p.add_argument("--fast-epochs", type=int, help="epochs for (c) (default: the fast recipe's own)")
    p.add_argument("--fast-model", default="fast",
                   choices=[name for name in RECIPE_DEFAULTS if name.startswith("fast")],
                   help="recipe for (c) (default: %(default)s)")
    p.add_argument("--minutes", type=float,
                   help="wall-time budget per contender (stops after the epoch that passes it)")
    p.add_argument("--only", nargs="+", choices=BENCH_CONTENDERS, default=list(BENCH_CONTENDERS),
                   help="contenders to run (default: all three)")
    p.add_argument("--target", type=float, help="validation accuracy to time every contender to "
                                                 "(default: the notebook's best)")
    p.add_argument("--out", default="bench_out", help="folder for bench.json (default: %(default)s)")
    return parser


def add_unsafe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unsafe", action="store_true", help="allow model files that run code when loaded")


def add_min_confidence(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-confidence", type=_argument_type(min_confidence_value), metavar="P",
                        help=MIN_CONFIDENCE_HELP)


def _target_accuracy(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise ImgclfError(f"the target accuracy must be above 0 and at most 1 (got {text})")
    return value


# Lines TensorFlow's and LiteRT's C++ code print, before or regardless of any log level.
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} .*(port\.cc|cudart_stub|cpu_feature_guard"
    r"|cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn|cuda_blas|cuda_fft|computation_placer)"
    r"|To enable the following instructions|Unable to register cu(DNN|BLAS|FFT) factory"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate|fully_quantize: \d|\s*$)"
)


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Filter the C++ chatter above out of file descriptor 2 while the block runs; anything
    else written there (a real error) is printed once the block ends."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not NATIVE_NOISE.match(line):
                    print(line, file=sys.stderr)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and start its devices without their start-up chatter."""
    with quiet_native_stderr():
        import tensorflow as tf

        from .training.distribute import split_cpu

        split_cpu()  # IMGCLF_LOGICAL_CPUS, before the devices start
        tf.config.list_physical_devices()


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # a training's clock counts from here: TensorFlow's import is part of the run
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ log level, read when it loads
    args = build_parser().parse_args(argv)
    args.started = started
    try:
        if _needs_tensorflow(args):
            import_tensorflow_quietly()
        return COMMANDS[args.command](args)
    except ImgclfError as exc:
        print(f"imgclf: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:  # the serving-only install (requirements-serve.txt) has no TensorFlow
        if os.environ.get("IMGCLF_DEBUG"):
            raise
        print(f"imgclf: error: {args.command} needs {exc.name}, which is not installed (a serving-only install "
              "runs .onnx and .tflite files; `pip install .` installs everything)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if os.environ.get("IMGCLF_DEBUG"):
            raise
        line = resource_error(exc)  # not a bug: the disk, the memory, a permission
        if line:
            print(f"imgclf: error: {line}", file=sys.stderr)
            return EXIT_ERROR
        print(f"imgclf: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set IMGCLF_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _config_from_args(args: argparse.Namespace, keys: typing.Iterable[str], validate: bool = True) -> TrainConfig:
    """Config file values (if --config), overridden by the options given on the command line;
    options not given keep TrainConfig's defaults (argparse leaves them out: SUPPRESS)."""
    from .data.decode import read_config_file

    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({key: getattr(args, key) for key in keys if hasattr(args, key)})
    return TrainConfig.from_dict(values, validate)


def cmd_train(args: argparse.Namespace) -> int:
    from .models.recipes import check
    from .training.distribute import tf_config
    from .training.loop import resume, train

    if args.workers:
        os.environ["TF_CONFIG"] = tf_config(args.workers, args.worker_index)
        if not hasattr(args, "distribute") and not args.resume:  # a resumed run keeps its own
            args.distribute = "multi-worker"
    if args.resume:
        given = [key for key in TRAIN_KEYS if hasattr(args, key)] + (["config"] if args.config else [])
        if given:
            options = ", ".join("--" + key.replace("_", "-") for key in given)
            raise ImgclfError(f"--resume continues a run with its own configuration; drop {options}")
        resume(args.resume, verbose=0 if args.quiet else None, started=args.started)
        return 0
    config = _config_from_args(args, TRAIN_KEYS, validate=False)
    check(config)  # the values, the recipe's name and what it takes, in one line, before any data is read
    if args.quiet:
        config = config.replace(verbose=0)
    train(config, started=args.started)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .training.lr_find import lr_find

    result = lr_find(_config_from_args(args, LR_FIND_KEYS), args.out, steps=args.steps)
    print(f"{result.steps} steps of batch {result.batch_size}: plot in {Path(args.out) / 'lr_find.png'}")
    print(result.line())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare, text_table

    result = compare(args.runs, args.out)
    print(text_table(result["rows"]))
    print(f"written: {', '.join(result['files'])}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .training.tune import tune

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.max_epochs is not None and args.max_epochs < 1:
        raise ImgclfError(f"--max-epochs must be at least 1 (got {args.max_epochs})")
    result = tune(_config_from_args(args, TUNE_KEYS), args.out, trials=args.trials, minutes=args.minutes,
                  models=models, max_epochs=args.max_epochs, objective=args.objective)
    print(f"{result.finished} trials finished ({result.complete} complete, {result.pruned} pruned, "
          f"{result.failed} failed or interrupted) in {result.seconds / 60:.1f} min")
    if result.best_trial is None:
        print("no trial has completed yet")
        return 0
    from .evaluation.compare import text_table

    print(text_table(result.rows))
    print(f"best: trial {result.best_trial} ({args.objective} {result.best_value:.4f}); its settings: "
          f"{result.best_config} (train --config {result.best_config}); its model: {result.best_model}; "
          f"all trials: {Path(args.out) / 'compare.html'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict import predict_files, write_predictions
    from .inference.runtimes import open_model

    if args.top_k < 1:
        raise ImgclfError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise ImgclfError(f"--output must end in .csv or .json (got {args.output})")
    with quiet_native_stderr():
        loaded = open_model(args.model, unsafe=args.unsafe)
    predictions, skipped = predict_files(loaded, args.paths, top_k=args.top_k, tta=args.tta, verbose=1,
                                         min_confidence=args.min_confidence)
    print_predictions(predictions, args.top_k)
    if args.min_confidence is not None:
        unsure = sum(bool(p.uncertain) for p in predictions)
        print(f"{unsure} of {len(predictions)} images uncertain (top probability below {args.min_confidence:g})")
    if args.output:
        write_predictions(args.output, predictions)
        print(f"wrote {args.output}")
    return 0


def print_predictions(predictions, top_k: int) -> None:
    width = min(max(len(p.name) for p in predictions), 70)
    cwidth = max(5, max(len(_shown_class(p)) for p in predictions))
    header = f"{'file':<{width}}  {'class':<{cwidth}}  confidence"
    if top_k > 1:
        header += "  next most likely"
    print(header)
    for p in predictions:
        name = p.name if len(p.name) <= width else "..." + p.name[-(width - 3):]
        line = f"{name:<{width}}  {_shown_class(p):<{cwidth}}  {p.confidence:10.4f}"
        if top_k > 1:
            line += "  " + ", ".join(f"{c} {s:.4f}" for c, s in p.top[1:])
        print(line)


def _shown_class(prediction) -> str:
    """The answer, with the top class in brackets when it is "uncertain"."""
    return f"{prediction.answer} ({prediction.label}?)" if prediction.uncertain else prediction.label


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate
    from .inference.runtimes import open_model

    config = _config_from_args(args, DATA_KEYS)
    with quiet_native_stderr():
        loaded = open_model(args.model, unsafe=args.unsafe)
    report = evaluate(loaded, config, out=args.out, tta=args.tta, unsafe=args.unsafe,
                      min_confidence=args.min_confidence, target_accuracy=args.target_accuracy)
    print(f"{report['source']}: {report['images']} images")
    print(f"accuracy {report['accuracy']:.4f}  f1 {report['f1']:.4f}  precision {report['precision']:.4f}  "
          f"recall {report['recall']:.4f}  loss {report['loss']:.4f}")
    analysis = report["analysis"]
    weighted = analysis["weighted"]
    top = [f"{key.replace('_', ' ')} {value:.4f}" for key, value in analysis.items() if key.startswith("top")]
    print("  ".join([*top, f"weighted f1 {weighted['f1']:.4f}  precision {weighted['precision']:.4f}  "
                     f"recall {weighted['recall']:.4f}", f"ECE {analysis['calibration']['ece']:.4f}"]))
    print_calibration(report)
    print_selective(analysis["selective"])
    width = max(5, max(len(c["class"]) for c in report["per_class"]))
    print(f"{'class':<{width}}  precision  recall      f1  support")
    for c in report["per_class"]:
        print(f"{c['class']:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    names = report["class_names"]
    print("confusion matrix (rows: true, columns: predicted)")
    widest = max(len(str(v)) for row in report["confusion_matrix"] for v in row)
    cell = max(5, widest + 1, min(12, max(map(len, names)) + 1))
    print(" " * width + "".join(f"{n[:cell - 1]:>{cell}}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        print(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    if analysis["most_confused"]:
        print("most confused: " + ", ".join(f"{p['true']} as {p['predicted']} ({p['images']})"
                                            for p in analysis["most_confused"][:5]))
    if args.out:
        print(f"wrote {args.out} (report.html, misclassified.csv: {len(analysis['misclassified'])} images)")
    return 0


def print_calibration(report: dict) -> None:
    calib, before = report["analysis"]["calibration"], report["analysis"].get("uncalibrated")
    if before is None:
        print(f"calibration: ECE {calib['ece']:.4f}, NLL {report['loss']:.4f}, mean confidence "
              f"{calib['mean_confidence']:.4f} (no temperature in the model: imgclf calibrate fits one)")
        return
    print(f"calibration: temperature {report['temperature']:.4f}; ECE {before['ece']:.4f} -> {calib['ece']:.4f}, "
          f"NLL {before['nll']:.4f} -> {report['loss']:.4f}, mean confidence {before['mean_confidence']:.4f} -> "
          f"{calib['mean_confidence']:.4f} (without -> with the temperature)")


def print_selective(summary: dict) -> None:
    """The thresholds table (three lines), then --min-confidence's and --target-accuracy's figures."""
    rows = summary.get("thresholds") or []
    if rows:
        lines = (("selective prediction: top p >= ", [f"{r['threshold']:<7g}" for r in rows]),
                 (" " * 22 + "coverage ", [f"{r['coverage']:<7.1%}" for r in rows]),
                 (" " * 22 + "accuracy ", ["-      " if r["accuracy"] is None else f"{r['accuracy']:<7.4f}"
                                           for r in rows]))
        for head, cells in lines:
            print((head + "".join(cells)).rstrip())
    row = summary.get("at_min_confidence")
    if row:
        accuracy = "no image answered" if row["accuracy"] is None else f"accuracy {row['accuracy']:.4f} on them"
        print(f"min confidence {row['threshold']:g}: {row['answered']} images answered ({row['coverage']:.1%} "
              f"coverage), {accuracy}; the rest uncertain")
    target = summary.get("for_target")
    if target:
        if target["threshold"] is None:
            print(f"target accuracy {target['target_accuracy']:g}: no confidence threshold reaches it on this data")
        else:
            print(f"target accuracy {target['target_accuracy']:g}: --min-confidence {target['threshold']:.6g} "
                  f"answers {target['coverage']:.1%} of the images, with accuracy {target['accuracy']:.4f}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.calibrate import calibrate

    given = any(getattr(args, key, None) for key in ("data_dir", "labels", "dataset"))
    config = _config_from_args(args, DATA_KEYS) if given else None
    with quiet_native_stderr():
        out, calibration = calibrate(args.model, config, out=args.out, tta=args.tta, overwrite=args.overwrite,
                                     unsafe=args.unsafe)
    print(calibration.line())
    print(f"wrote {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .inference.explain import HEATMAPS_FILE, PREDICTIONS_FILE, explain_files
    from .inference.runtimes import open_model

    with quiet_native_stderr():
        loaded = open_model(args.model, unsafe=args.unsafe)
    started = time.perf_counter()
    explanations, skipped = explain_files(loaded, args.paths, args.out, class_name=args.class_name, verbose=1)
    seconds = time.perf_counter() - started
    width = min(max(len(e.name) for e in explanations), 70)
    print(f"{'file':<{width}}  class  confidence  overlay")
    for e in explanations:
        name = e.name if len(e.name) <= width else "..." + e.name[-(width - 3):]
        print(f"{name:<{width}}  {e.predicted}  {e.confidence:.4f}  {e.overlay}"
              + ("" if e.explained == e.predicted else f" (heatmap of {e.explained})"))
    print(f"wrote {len(explanations)} overlays, {PREDICTIONS_FILE} and {HEATMAPS_FILE} to {args.out} "
          f"({seconds:.1f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import write_run_report

    with quiet_native_stderr():
        path = write_run_report(args.run, unsafe=args.unsafe)
    print(f"wrote {path}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.check import NEAR_BITS, check_data, format_check
    from .run.atomic import write_json

    near = NEAR_BITS if args.near_bits is None else args.near_bits
    if not 0 <= near <= 32:
        raise ImgclfError(f"--near-bits must be between 0 and 32 (got {near})")
    check = check_data(args.source, near=near, perceptual=not args.no_near)
    print(format_check(check))
    if args.json:
        write_json(args.json, check.to_dict())
        print(f"wrote {args.json}")
    return EXIT_ERROR if check.problems else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.train import run_bench

    config = _config_from_args(args, BENCH_KEYS)
    run_bench(config, epochs=args.epochs, minutes=args.minutes, out=Path(args.out), contenders=tuple(args.only),
              fast_epochs=args.fast_epochs, fast_model=args.fast_model, target=args.target)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export.verify import print_report
    from .export.writers import export_model

    formats = list(EXPORT_FORMATS) if "all" in args.format else list(dict.fromkeys(args.format))
    if args.out and len(formats) > 1:
        raise ImgclfError("--out names one file: give one --format with it")
    for fmt in formats:
        with quiet_native_stderr():
            report = export_model(args.model, fmt, args.out, check_data=args.check_data,
                                  calibration_data=args.calibration_data, unsafe=args.unsafe, verbose=False)
        print_report(report)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve

    if not 0 <= args.port < 65536:
        raise ImgclfError(f"--port must be 0-65535, 0 for any free port (got {args.port})")
    if args.workers < 1:
        raise ImgclfError(f"--workers must be at least 1 (got {args.workers})")
    limits = ServeLimits(args.max_upload_mb, args.max_images, round(args.max_megapixels * 1_000_000))  # checked
    with quiet_native_stderr():
        from .inference.runtimes import open_model

        loaded = open_model(args.model)  # a bad model file fails here, with one line
    serve(loaded if args.workers == 1 else args.model, args.host, args.port, args.workers, limits,
          min_confidence=args.min_confidence)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .bench.serve import run_bench_serve

    if min(args.calls, args.http_requests, args.mixed) < 8:
        raise ImgclfError("--calls, --http-requests and --mixed must be at least 8")
    with quiet_native_stderr():
        report = run_bench_serve(args.models, args.out, calls=args.calls, http_requests=args.http_requests,
                                 mixed=args.mixed)
    failed = [m for m, entry in report["models"].items() if entry["mixed_requests"]["server_errors"]
              or not entry["mixed_requests"]["still_answering"]]
    if failed:
        raise ImgclfError(f"the service failed the mixed requests for {', '.join(failed)}")
    return 0


WITHOUT_TENSORFLOW = ("check-data", "compare")  # commands that never load TensorFlow (seconds saved)


def _needs_tensorflow(args: argparse.Namespace) -> bool:
    """predict and serve load TensorFlow only for a model that needs it (not .onnx, .tflite)."""
    if args.command in ("predict", "serve"):
        from .inference.runtimes import needs_tensorflow

        return needs_tensorflow(args.model)
    return args.command not in WITHOUT_TENSORFLOW


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate, "export": cmd_export,
            "serve": cmd_serve, "bench": cmd_bench, "bench-serve": cmd_bench_serve, "report": cmd_report,
            "check-data": cmd_check_data, "calibrate": cmd_calibrate, "explain": cmd_explain,
            "lr-find": cmd_lr_find, "compare": cmd_compare, "tune": cmd_tune}


def _grouped_defaults(field: str) -> str:
    """One of the recipes' defaults, grouped: "0.2 for fast, fast-tiny; 0 for the others"."""
    from collections import Counter

    values = {name: getattr(defaults, field) for name, defaults in RECIPE_DEFAULTS.items()}
    common = Counter(values.values()).most_common(1)[0][0]
    rare = sorted(set(values.values()) - {common})
    return "; ".join([f"{v:g} for {', '.join(n for n, x in values.items() if x == v)}" for v in rare]
                     + [f"{common:g} for " + ("the others" if rare else "all")])


def _model_defaults(key: str) -> str:
    return ", ".join(f"{name}: {getattr(defaults, key)}" for name, defaults in RECIPE_DEFAULTS.items())


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
