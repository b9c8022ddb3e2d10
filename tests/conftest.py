"""Shared fixtures: tiny generated image folders (no network, no shared data needed)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TRAIN = REPO.parent / "shared" / "datasets" / "cifar10" / "train"
COLORS = {"red": (200, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 200)}  # easy to learn


def make_image_folder(root: Path, per_class: int = 16, size=(20, 24), classes=COLORS, seed: int = 0) -> Path:
    """One subfolder per class of noisy solid-colour images (varied sizes and formats)."""
    rng = np.random.default_rng(seed)
    for c, (name, color) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            image.save(folder / (f"{i}.png" if (i + c) % 2 else f"{i}.jpg"))
    return root


SQUARE_COLORS = {"red": (230, 30, 30), "green": (30, 210, 30), "blue": (40, 60, 230), "yellow": (230, 220, 30)}


def make_square_folder(root: Path, per_class: int = 100, size: int = 32, square: int = 8,
                       seed: int = 0) -> dict[str, tuple[int, int]]:
    """One subfolder per class of grey noise images with one small square of the class's colour
    at a random place: the classes differ only there. Returns {file path: (top, left)} of each
    image's square."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for name, color in SQUARE_COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = rng.normal(120, 35, (size, size, 1)) + rng.normal(0, 6, (size, size, 3))
            pixels = np.clip(grey, 0, 255)
            top, left = (int(v) for v in rng.integers(0, size - square + 1, 2))
            pixels[top:top + square, left:left + square] = np.array(color) + rng.normal(0, 8, (square, square, 3))
            path = folder / f"{i}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
            boxes[str(path)] = (top, left)
    return boxes


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once for all of `make test`'s workers: the first
    worker to need it builds it in the folder the workers share (under a lock, which the
    others wait on), and every worker gets a copy of its own, so that what one worker's tests
    write there (exports, reports) never meets the other's. Paths that the built files record
    (a run's data_dir, its split) point to the shared folder, which no test changes."""
    own = tmp_path_factory.mktemp(name)
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: nothing to share
        build(own)
        return own
    shared = tmp_path_factory.getbasetemp().parent / f"built-{name}"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".built").exists():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed in the other worker
            build(shared)
            (shared / ".built").touch()
    return Path(shutil.copytree(shared, own, dirs_exist_ok=True))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One short training shared by the tests that only need a run folder and a model."""
    from imgclf import TrainConfig, train

    def build(root: Path) -> None:
        data = make_image_folder(root / "images")
        train(TrainConfig(data_dir=str(data), epochs=2, image_size=16, out=str(root / "run"), verbose=0))

    return built_once(tmp_path_factory, "shared", build) / "run"


EXPORT_RECIPES = ("seed", "fast-tiny")


@pytest.fixture(scope="session")
def export_runs(tmp_path_factory) -> dict[str, Path]:
    """Short trainings of the `seed` and `fast-tiny` recipes on 210 images (42 for validation):
    an export's check takes them all, at least its MIN_CHECK_IMAGES without copies, and both
    recipes classify them all correctly: recipe -> run folder."""
    from imgclf import TrainConfig, train

    def build(root: Path) -> None:
        data = make_image_folder(root / "images", per_class=70, size=(16, 16))
        for model in EXPORT_RECIPES:
            train(TrainConfig(data_dir=str(data), model=model, epochs=2, image_size=16, out=str(root / model),
                              verbose=0))

    root = built_once(tmp_path_factory, "export", build)
    return {model: root / model for model in EXPORT_RECIPES}


@pytest.fixture(scope="session")
def square_runs(tmp_path_factory) -> tuple[dict[str, tuple[int, int]], dict[str, Path]]:
    """`seed` and `fast-tiny` trained on `make_square_folder`'s images (32 pixels, 4 classes
    told apart only by a small square's colour): (each image's square, recipe -> run folder)."""
    from imgclf import TrainConfig, train

    root = tmp_path_factory.mktemp("squares")
    boxes = make_square_folder(root / "images", per_class=SQUARE_IMAGES)
    return boxes, {model: train(TrainConfig(data_dir=str(root / "images"), model=model, epochs=SQUARE_EPOCHS,
                                            out=str(root / model), verbose=0))
                   for model in ("seed", "fast-tiny")}


SQUARE_IMAGES, SQUARE_EPOCHS = 100, 10  # per class; both recipes then classify every validation image


def pytest_collection_modifyitems(items):
    """Tests that use a fixture which trains models beyond `trained_run` are slow, marked here
    once rather than test by test. Then the longest files run first: `make test`'s two workers
    take whole files (`--dist loadfile`, in this order with `--no-loadscope-reorder`), so the
    longest start early instead of leaving one worker alone with them at the end."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow: dict[str, int] = {}
    for item in items:
        slow[item.nodeid.split("::")[0]] = slow.get(item.nodeid.split("::")[0], 0) + bool(
            item.get_closest_marker("slow"))

    def order(item):  # the longest files first (measured), then those with the most slow tests
        path = item.nodeid.split("::")[0]
        longest = next((i for i, name in enumerate(LONGEST_FILES) if path.endswith(name)), len(LONGEST_FILES))
        return longest, -slow[path]

    items.sort(key=order)  # stable: each file's own order kept


# The test files that take longest (`make test`'s durations), longest first: a worker that starts
# one of them late would finish alone, long after the other.
LONGEST_FILES = ("training/test_resume.py", "training/test_distribute.py", "training/test_tune.py",
                 "test_bad_files.py", "training/test_improve.py", "bench/test_bench_train.py",
                 "test_notebooks.py", "training/test_budget.py")


TRAINING_FIXTURES = {"export_runs", "square_runs"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `imgclf` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "imgclf.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def run_main(*args: str) -> subprocess.CompletedProcess:
    """Run `imgclf ARGS` in this process, through the command's own entry point
    (`imgclf.cli.main`): its exit status and what it printed, as `run_cli` gives them, without
    the ~6 s start of a new process. (`run_cli` stays for what only a new process shows: a
    start without TensorFlow's chatter, kills, native output.)"""
    from imgclf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def make_hostile_entries(folder):
    """Entries named like images that are not regular files: a FIFO, links to /dev/zero and
    /dev/urandom, a Unix socket, a link loop and a folder. Returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "urandom.png").symlink_to("/dev/urandom")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "socket.png"))  # the socket file stays after the close
    (folder / "folder.jpg").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "folder.jpg" / "inside.png")
    return [folder / name for name in ("pipe.jpg", "zero.jpg", "urandom.png", "loop.jpg", "socket.png", "folder.jpg")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# history.csv's columns compared between runs: all but the epoch durations
METRIC_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_f1", "val_precision",
                  "val_recall", "learning_rate"]


def history(run: Path) -> list[list[str]]:
    return [[row[c] for c in METRIC_COLUMNS] for row in read_csv(run / "history.csv")]


def train_with_copies(config, after, into: Path) -> Path:
    """Train `config` (a fresh session, so that layer names are those a fresh process gives),
    copying its run folder to `into / f"after{k}"` as a SIGKILL right after the checkpoint of
    epoch k (each k in `after`) would leave it: at the start of epoch k + 1, every file of
    epoch k is written (the checkpoint last)."""
    import keras

    from imgclf import train

    class CopyRunFolder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch in after:
                shutil.copytree(config.out, into / f"after{epoch}")

    keras.backend.clear_session()
    return train(config, extra_callbacks=[CopyRunFolder()])


def resumed_history(run: Path) -> list[list[str]]:
    """Resume `run` in this process (a fresh session); its history."""
    import keras

    from imgclf import resume

    keras.backend.clear_session()
    resume(run, verbose=0)
    return history(run)


def write_backbone_weights(path: Path, name: str = "mobilenetv3small", size: int = 32, seed: int = 5) -> Path:
    """A weights file for a backbone, as `--weights PATH` takes it: random weights with
    BatchNorm statistics estimated on random images (like a trained network's, its features
    neither vanish nor explode in inference mode)."""
    import keras

    from imgclf.models.backbones import base_model
    from imgclf.models.registry import create_model

    keras.utils.set_random_seed(seed)
    base = base_model(create_model(name, (size, size, 3), 3, weights="none"))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the next batch's statistics become the moving ones
    base(np.random.default_rng(seed).integers(0, 256, (64, size, size, 3)).astype("float32"), training=True)
    base.save_weights(path)
    return path


CHROMIUM = "/usr/bin/chromium"  # Debian's packages chromium and chromium-driver (`make browser` installs them)
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(profile: Path):
    """Selenium driving Debian's chromium, headless, its console log kept (quit it after use)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), \
        "Debian's chromium and chromium-driver are needed: run `make browser` (apt-get install chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
