"""The real command line, end to end: in subprocesses, or (`run_main`) through its entry point in this
process where a new process would show nothing more."""

import json

import pytest

from conftest import make_image_folder, read_csv, run_cli, run_main


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, result.stderr  # one error line (plus, at most, the warning naming skipped files)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow  # a real training
def test_train_from_a_config_file_streamed_with_a_cache_then_predict_and_evaluate(tmp_path):
    """One real training in this process, after any deterministic run an earlier test of this
    worker made (its op determinism must end with it, or tf.data's cache of the validation
    batches stays unfinished): settings from a file, options given override them, images
    streamed through a cache; then its model predicts and evaluates."""
    data = make_image_folder(tmp_path / "data", per_class=12)
    (tmp_path / "c.json").write_text(json.dumps({"data_dir": str(data), "epochs": 5, "image_size": 16}))
    run = tmp_path / "run"
    result = run_main("train", "--config", tmp_path / "c.json", "--epochs", "2", "--out", run,
                      "--memory-limit-mb", "0", "--cache", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch   2/2" in result.stdout and (run / "best_model.keras").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["image_size"] == 16 and saved["data_dir"] == str(data)
    assert saved["cache"] == str(tmp_path / "cache") and saved["memory_limit_mb"] == 0
    assert json.loads((run / "data.json").read_text())["in_memory"] is False
    # the training images and the validation batches, each decoded once into the cache
    assert {p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.index")} == {"train", "eval"}

    result = run_main("predict", run / "best_model.keras", data / "red", str(data / "blue" / "*.png"),
                      "--top-k", "2", "--output", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].split()[:3] == ["file", "class", "confidence"]
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 12 + 6 and {"file", "class", "confidence", "class_2"} <= set(rows[0])

    result = run_main("predict", run / "best_model.keras", data / "green" / "0.png", "--output", tmp_path / "p.json")
    assert result.returncode == 0
    (item,) = json.loads((tmp_path / "p.json").read_text())
    assert item["file"].endswith("0.png") and 0 <= item["confidence"] <= 1

    result = run_main("evaluate", run / "best_model.keras", "--data-dir", data, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 36 and 0 <= metrics["f1"] <= 1
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize("make_args,fragment", [
    (lambda t: ["train", "--data-dir", t / "missing"], "not found"),
    (lambda t: ["train", "--data-dir", (t / "empty").mkdir() or t / "empty"], "no images"),
    (lambda t: ["train", "--data-dir", make_image_folder(t / "one", per_class=3, classes={"a": (1, 1, 1)})],
     "two classes"),
    (lambda t: ["train", "--frobnicate"], "unrecognized arguments"),
    (lambda t: ["train", "--epochs", "zero"], "invalid int"),
    (lambda t: ["train", "--epochs", "0"], "epochs must be at least 1"),
    (lambda t: ["train", "--model", "nope", "--epochs", "0"], "at least 1 (got 0); unknown model 'nope'"),
    (lambda t: ["train", "--val-split", "1"], "val_split"),
    (lambda t: ["train", "--workers", "10.0.0.1:2222"], "two or more host:port"),
    (lambda t: ["train", "--distribute", "multi-worker"], "needs TF_CONFIG"),
    (lambda t: ["predict", (t / "m.keras").write_text("hi") and t / "m.keras", t], "not a Keras model"),
    (lambda t: ["predict", t / "none.keras", t], "not found"),
    (lambda t: ["evaluate", t], "folder"),
])
def test_bad_input_is_one_line_and_non_zero(tmp_path, make_args, fragment):
    assert_clean_error(run_main(*make_args(tmp_path)), fragment)


def test_predict_skips_and_names_bad_files(tmp_path, trained_run):
    folder = tmp_path / "mixed"
    make_image_folder(folder, per_class=2)
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run_main("predict", trained_run / "best_model.keras", folder)
    assert result.returncode == 0
    assert "broken.jpg" in result.stderr and "broken.jpg" not in result.stdout
    assert len(result.stdout.splitlines()) == 1 + 6


def test_predict_with_nothing_usable_fails(tmp_path, trained_run):
    (tmp_path / "a.jpg").write_text("text")
    result = run_main("predict", trained_run / "best_model.keras", tmp_path / "a.jpg")
    assert_clean_error(result, "usable image")
    assert "a.jpg (not an image)" in result.stderr


@pytest.mark.slow  # a new process: Keras reads KERAS_HOME when it is imported
def test_cifar10_without_network_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("IMGCLF_CIFAR10_HOST", "cifar10.invalid")
    result = run_cli("train", "--epochs", "1", "--out", tmp_path / "run", timeout=60)
    assert_clean_error(result, "CIFAR-10", "--data-dir")


def _commands() -> dict:
    import argparse

    from imgclf.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_choice_list_of_the_cli_is_configs():
    """No list of choices is written twice: every option's choices, in every command, are a
    list of config.py's (or the recipe table's names)."""
    from imgclf import config
    from imgclf.models.recipes import RECIPE_DEFAULTS

    expected = {"dataset": config.DATASETS, "resize": config.RESIZE_MODES, "precision": config.PRECISIONS,
                "distribute": config.DISTRIBUTE_MODES, "format": (*config.EXPORT_FORMATS, "all"),
                "only": config.BENCH_CONTENDERS, "calibrate": config.CALIBRATIONS, "objective": config.TUNE_OBJECTIVES,
                "fast_model": tuple(name for name in RECIPE_DEFAULTS if name.startswith("fast"))}
    seen = set()
    for command, parser in _commands().items():
        for action in parser._actions:
            if action.choices is not None:
                assert tuple(action.choices) == expected[action.dest], (command, action.dest)
                seen.add(action.dest)
    assert seen == set(expected)


def test_train_options_are_the_config_fields_and_serve_limits_configs():
    from imgclf.cli import TRAIN_KEYS
    from imgclf.config import ServeLimits, TrainConfig

    train = _commands()["train"]
    assert set(TRAIN_KEYS) == set(TrainConfig.__dataclass_fields__) - {"verbose"}
    assert set(TRAIN_KEYS) <= {action.dest for action in train._actions}
    serve = _commands()["serve"].parse_args(["model.keras"])
    limits = ServeLimits()
    assert (serve.max_upload_mb, serve.max_images, serve.max_megapixels) == \
        (limits.max_body_mb, limits.max_images, limits.max_megapixels)
    assert_clean_error(run_main("serve", "model.keras", "--max-images", "0"), "images per request must be at least 1")
