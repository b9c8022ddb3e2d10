"""Broken and unusual files everywhere images are read: train, predict, evaluate.

Each file is either used (decoded correctly) or skipped and named; no traceback; a
non-zero exit only when nothing usable remains."""

import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_hostile_entries, read_csv, run_cli, run_main

pytestmark = pytest.mark.slow  # trainings in subprocesses

ODD_CLASS = "gato_ß_猫"  # a non-ASCII class name


def _rgb(seed, size=(20, 20), base=(200, 40, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(np.array(base) + rng.normal(0, 25, (*size[::-1], 3)), 0, 255).astype(np.uint8))


def _png_bytes(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_odd_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(usable, unusable) files of more than 20 kinds, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    usable, unusable = [], []

    def keep(name, make):
        path = folder / name
        make(path)
        usable.append(path)

    def bad(name, make):
        path = folder / name
        make(path)
        unusable.append(path)

    image = _rgb(1)
    # usable, if unusual
    keep("png_named.jpg", lambda p: p.write_bytes(_png_bytes(image)))  # wrong extension
    keep("no_extension", lambda p: p.write_bytes(_png_bytes(image)))
    keep("sixteen_bit.png", lambda p: Image.fromarray((np.arange(400).reshape(20, 20) * 150).astype(np.uint16)).save(p))
    keep("cmyk.jpg", lambda p: image.convert("CMYK").save(p, "JPEG"))
    keep("palette.png", lambda p: image.convert("P", palette=Image.Palette.ADAPTIVE).save(p))
    keep("palette_transparent.gif", lambda p: image.convert("P").save(p, transparency=0))
    keep("animated.gif", lambda p: image.save(p, save_all=True, append_images=[_rgb(2), _rgb(3)], duration=50))
    keep("one_pixel.png", lambda p: Image.new("RGB", (1, 1), (200, 40, 40)).save(p))
    keep("grey.png", lambda p: image.convert("L").save(p))
    keep("grey_alpha.png", lambda p: image.convert("LA").save(p))
    keep("rgba.png", lambda p: image.convert("RGBA").save(p))
    keep("bilevel.png", lambda p: image.convert("1").save(p))
    keep("float.tiff", lambda p: Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)).save(p))
    keep("image.bmp", lambda p: image.save(p, "BMP"))
    keep("image.webp", lambda p: image.save(p, "WEBP"))
    keep("progressive.jpg", lambda p: image.save(p, "JPEG", progressive=True))
    keep("long_strip.png", lambda p: _rgb(4, size=(400, 3)).save(p))
    keep("ünïcödé_名前.png", lambda p: image.save(p))
    keep("no_permission.png", lambda p: (image.save(p), os.chmod(p, 0)))  # root can still read it
    # unusable
    jpeg = folder / "_jpeg_source"
    image.save(jpeg, "JPEG")
    bad("truncated.jpg", lambda p: p.write_bytes(jpeg.read_bytes()[:200]))
    jpeg.unlink()
    bad("truncated.png", lambda p: p.write_bytes(_png_bytes(_rgb(5, size=(64, 64)))[:300]))
    bad("zero_bytes.jpg", lambda p: p.write_bytes(b""))
    bad("text.jpg", lambda p: p.write_text("this is not an image\n"))
    bad("page.png", lambda p: p.write_text("<html><body>404 not found</body></html>"))
    bad("random_bytes.png", lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)))
    bad("notes.txt", lambda p: p.write_text("labels go in folder names"))
    bad("broken_link.png", lambda p: p.symlink_to(folder / "does_not_exist.png"))
    bad("bomb.png", _write_bomb)
    bad("bad_crc.png", _write_corrupt_png)
    unusable += make_hostile_entries(folder)  # FIFO, devices, socket, link loop, folder named like an image
    if os.geteuid() != 0:  # root reads anything; others cannot read this one
        usable.remove(folder / "no_permission.png")
        unusable.append(folder / "no_permission.png")
    return usable, unusable


def _write_bomb(path: Path) -> None:
    """A valid, tiny PNG header that claims 20000 x 20000 pixels (400 Mpx)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))


def _write_corrupt_png(path: Path) -> None:
    data = bytearray(_png_bytes(_rgb(6, size=(32, 32))))
    data[60:80] = bytes(20)  # inside the compressed pixel data
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "data"
    for c, (name, base) in enumerate({"red": (200, 40, 40), ODD_CLASS: (40, 40, 200)}.items()):
        (root / name).mkdir(parents=True)
        for i in range(12):
            _rgb(100 * c + i, base=base).save(root / name / f"{i}.png")
    usable, unusable = make_odd_files(root / "red")
    assert len(usable) + len(unusable) >= 20
    return root, usable, unusable


def assert_names_every_bad_file(result, unusable):
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    for path in unusable:
        assert str(path) in text, f"{path.name} not reported"


FAST = 120  # seconds: a command that opened a FIFO or /dev/zero would block far longer (for ever)


def run_together(*commands):
    """`imgclf` commands in processes side by side (this process only waits for them): their results."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args, timeout=FAST), commands))


def run_in_time(*args):
    """`imgclf ARGS` in this process (`run_main`), watched from here: one that blocks fails the
    test after FAST seconds instead of hanging the suite."""
    done = []
    thread = threading.Thread(target=lambda: done.append(run_main(*args)), daemon=True)
    thread.start()
    thread.join(FAST)
    assert done, f"imgclf {args[0]} did not end within {FAST} s"
    return done[0]


def test_train_predict_evaluate_check_data_survive_odd_files(odd_data, tmp_path):
    root, usable, unusable = odd_data
    run = tmp_path / "run"
    fifo = root / "red" / "pipe.jpg"  # given by name: refused, not opened
    checked, result = run_together(["check-data", root, "--no-near"],
                                   ["train", "--data-dir", root, "--epochs", "1", "--image-size", "16", "--out", run])
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert_names_every_bad_file(checked, unusable)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_names_every_bad_file(result, unusable)
    split = {row["item"] for row in read_csv(run / "split.csv")}
    assert {str(p) for p in usable} <= split and not {str(p) for p in unusable} & split

    # the model's users in this process (watched: one that blocked would fail the test, not hang it)
    result = run_in_time("predict", run / "best_model.keras", root, "--output", tmp_path / "p.csv")
    evaluated = run_in_time("evaluate", run / "best_model.keras", "--data-dir", root, "--out", tmp_path / "eval")
    named = run_in_time("predict", run / "best_model.keras", fifo, root / "red" / "0.png")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_names_every_bad_file(result, unusable)
    predicted = {row["file"] for row in read_csv(tmp_path / "p.csv")}
    assert {str(p) for p in usable} <= predicted and not {str(p) for p in unusable} & predicted

    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert_names_every_bad_file(evaluated, unusable)
    assert ODD_CLASS in evaluated.stdout
    assert named.returncode == 0 and f"{fifo} (not a regular file: a named pipe)" in named.stderr


def test_nothing_usable_is_a_clean_error(odd_data, tmp_path):
    root, _, unusable = odd_data
    only_bad = tmp_path / "only_bad"
    for name in ("a", "b"):
        make_odd_files(only_bad / name)
        for path in (only_bad / name).iterdir():
            if path not in {only_bad / name / p.name for p in unusable}:
                path.unlink()
    from imgclf.inference.modelio import save_model
    from imgclf.models.registry import create_model

    save_model(create_model("seed", (16, 16, 3), 2), tmp_path / "m.keras", ["a", "b"])
    # in this process, as the first test's predict and evaluate (its check-data and train: in new processes)
    trained = run_in_time("train", "--data-dir", only_bad, "--epochs", "1", "--out", tmp_path / "run")
    predicted = run_in_time("predict", tmp_path / "m.keras", only_bad)
    evaluated = run_in_time("evaluate", tmp_path / "m.keras", "--data-dir", only_bad, "--out", tmp_path / "eval")
    assert trained.returncode != 0 and "Traceback" not in trained.stderr
    assert "usable image" in trained.stderr
    assert predicted.returncode != 0 and "Traceback" not in predicted.stderr and "usable image" in predicted.stderr
    assert evaluated.returncode != 0 and "Traceback" not in evaluated.stderr
