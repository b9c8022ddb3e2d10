"""Errors of the operating system and the runtime (disk full, out of memory, permission
denied) are one line that names the file or the setting and says what was kept; an image
size whose input pipeline cannot fit in memory is refused before anything starts."""

import errno
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from imgclf import DataError, TrainConfig, load_model, resume, train
from imgclf.errors import StorageError, resource_error

from conftest import make_image_folder, run_main


class FullDisk:
    """A folder on a disk that can be filled: a small tmpfs where the tests run as root (the
    kernel's real ENOSPC), else ENOSPC injected into imgclf's write path (atomic.py)."""

    def __init__(self, root: Path, monkeypatch):
        self.path = root / "disk"
        self.path.mkdir()
        self.monkeypatch = monkeypatch
        self.filler = self.path / "filler"
        self.tmpfs = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(self.path)], capture_output=True).returncode == 0
        self.full = False

    def fill(self):
        self.full = True
        if self.tmpfs:
            with open(self.filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * (1 << 20))
                        handle.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            return
        from imgclf.run import atomic
        real = os.replace
        disk = self

        class Os:  # the os module, but replacing files on this disk fails while it is full
            def __getattr__(self, name):
                return getattr(os, name)

            def replace(self, src, dst):
                if disk.full and str(dst).startswith(str(disk.path)):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
                return real(src, dst)

        self.monkeypatch.setattr(atomic, "os", Os())

    def free(self):
        self.full = False
        self.filler.unlink(missing_ok=True)

    def close(self):
        if self.tmpfs:
            subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    disk = FullDisk(tmp_path, monkeypatch)
    yield disk
    disk.close()


@pytest.mark.slow  # a training, then its resume
def test_disk_full_mid_run_keeps_every_file_whole_and_the_run_resumes(disk, tmp_path):
    data = make_image_folder(tmp_path / "images", per_class=8, size=(12, 12))
    run = disk.path / "run"

    class FillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                disk.fill()

    config = TrainConfig(data_dir=str(data), epochs=3, image_size=12, out=str(run), verbose=0)
    keras.backend.clear_session()
    with pytest.raises(StorageError) as caught:
        train(config, extra_callbacks=[FillAfterFirstEpoch()])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"disk full while writing {run}/")
    assert "is intact" in message and f"--resume {run}" in message
    best = load_model(run / "best_model.keras")  # the first epoch's, loadable
    assert best.metadata["epoch"] == 1
    assert not list(run.glob(".*partial*"))  # no half-written file left behind
    disk.free()
    keras.backend.clear_session()  # layer names restart, as in the fresh process that resumes a run
    assert resume(run, verbose=0) == run
    assert np.genfromtxt(run / "history.csv", delimiter=",", names=True)["epoch"].tolist() == [1, 2, 3]


def test_best_model_save_on_a_full_disk_names_the_kept_epoch(disk, tmp_path):
    from imgclf.models.registry import create_model
    from imgclf.run.folder import RunFolder
    from imgclf.training.callbacks import BestModelCheckpoint

    best = BestModelCheckpoint(RunFolder(disk.path), ["a", "b"], model_name="seed")
    best.set_model(create_model("seed", (12, 12, 3), 2))
    best.on_epoch_end(6, {"val_loss": 0.9})
    disk.fill()
    with pytest.raises(StorageError, match=r"^disk full while writing .*best_model.keras; the previous best model "
                                           r"\(epoch 7\) is intact$"):
        best.on_epoch_end(7, {"val_loss": 0.5})
    assert load_model(disk.path / "best_model.keras").metadata["epoch"] == 7


def test_cli_prints_one_line_on_a_full_disk(disk, tmp_path, capsys):
    from imgclf.cli import main

    data = make_image_folder(tmp_path / "images", per_class=4, size=(12, 12))
    disk.fill()
    code = main(["train", "--data-dir", str(data), "--epochs", "1", "--image-size", "12", "--quiet",
                 "--out", str(disk.path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("imgclf")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("imgclf: error: disk full while writing") and "internal error" not in err


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/a/x.png"), "disk full while writing or reading "
                                                                        "runs/a/x.png"),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/out"), "permission denied while writing or reading "
                                                                     "/etc/out"),
    (MemoryError(), "out of memory; try a smaller --batch-size"),
    (type("ResourceExhaustedError", (Exception,), {})("OOM when allocating tensor"), "out of memory (OOM when"),
    (ValueError("a bug"), None),
    (OSError(errno.EIO, "I/O error"), None),
])
def test_resource_errors_are_one_line(exc, expected):
    line = resource_error(exc)
    assert (line is None) if expected is None else (line.startswith(expected) and "\n" not in line)


def test_an_image_size_too_large_for_memory_is_refused_before_decoding(tmp_path):
    data = make_image_folder(tmp_path / "images", per_class=4, size=(12, 12))
    result = run_main("train", "--data-dir", data, "--image-size", "100000", "--out", tmp_path / "run")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "image_size 100000x100000" in result.stderr and "megapixels" in result.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="input pipeline alone needs"):  # within the pixel limit, not the memory
        train(TrainConfig(data_dir=str(data), image_size=6000, batch_size=4096, out=str(tmp_path / "run"),
                          verbose=0))
    assert not (tmp_path / "run").exists()
