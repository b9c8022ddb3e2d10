"""Decoding image files into the RGB uint8 arrays a model takes.

Training, evaluation and prediction all go through `decode_paths` (many files: decode in
parallel, skip the unusable ones and name them in one warning) and `decode_image` (one
file), so an image is converted the same way everywhere: first frame of animations, any
mode (grayscale, RGBA, palette, CMYK, 16-bit) to 8-bit RGB, resized to the model's input
size by one of `config.RESIZE_MODES`. Files that are not decodable images raise `BadImage`.

Files are read by one rule (`read_user_file`, also for CSV file lists and configuration
files): only regular files, after resolving links, no
larger than MAX_FILE_BYTES; FIFOs, sockets, devices, folders and link loops are refused
without being read, so no command can block on a file.

Pillow's global settings are left as they are: the size limit is checked here, per image,
and truncated files fail as Pillow's default (`LOAD_TRUNCATED_IMAGES = False`) makes them.
The warnings Pillow emits while decoding are captured per thread (`captured_warnings`), not
by `warnings.catch_warnings`, which swaps process-wide state and is not thread-safe.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import stat
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from ..config import DEFAULT_RESIZE, MAX_IMAGE_PIXELS, RESIZE_MODES
from ..errors import DataError, ImgclfError

MAX_FILE_BYTES = 256 * 2**20  # image files larger than this are reported as unusable, not read
RESAMPLE = Image.Resampling.BILINEAR
DECODE_BATCH = 256  # images per chunk when resizing many arrays
CHECK_BATCH = 64  # files per task when decoding many files in parallel
# threads decoding files: Pillow releases the GIL while it decodes and resizes
DECODE_THREADS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
PROGRESS_FROM = 5000  # files: show a progress count and the decoding time from this many
PROGRESS_SECONDS = 0.5  # between redraws of the progress count
MAX_CONFIG_BYTES = 2**20  # a configuration file is a small JSON object


class BadImage(Exception):
    """The file is not a usable image (the message says why)."""


def read_user_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The content of the file at `path`, if it is a regular file (links resolved) of at most
    `max_bytes`; otherwise `BadImage`, without reading it. FIFOs, sockets, devices, folders and
    link loops are refused by their type before they are opened, and the opened file is
    checked again (opened non-blocking, so a file swapped for a FIFO in between cannot block)."""
    try:
        _check_regular(os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadImage(_os_reason(exc)) from None
    with os.fdopen(fd, "rb") as handle:
        try:
            _check_regular(os.fstat(fd), max_bytes)
            content = handle.read(max_bytes + 1)
        except OSError as exc:
            raise BadImage(_os_reason(exc)) from None
    if len(content) > max_bytes:  # grew since its size was read
        raise BadImage(f"larger than the file size limit of {max_bytes / 2**20:.0f} MiB")
    return content


def read_config_file(path: str | os.PathLike) -> dict:
    """The JSON object in a configuration file (a run's config.json or a user's --config),
    read by `read_user_file`'s rule."""
    try:
        values = json.loads(read_user_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (BadImage, ValueError) as exc:
        raise ImgclfError(f"cannot read configuration file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ImgclfError(f"configuration file {path} must hold a JSON object")
    return values


FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_regular(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(info.st_mode)), "not a regular file")
        raise BadImage(f"not a regular file: {kind}")
    if info.st_size > max_bytes:
        raise BadImage(f"{info.st_size / 2**20:.0f} MiB, larger than the file size limit of "
                       f"{max_bytes / 2**20:.0f} MiB")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "missing file or broken link"
    if exc.errno == errno.ELOOP:
        return "link loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read ({exc.strerror or exc})"


def walk_files(folder: str | Path) -> list[str]:
    """Every entry under `folder` that is not a folder, recursively, in sorted order; hidden
    files and folders left out; links to folders not followed. What is not a regular file
    (FIFOs, sockets, devices, link loops) is listed too, for the reader to report as
    unusable (`read_user_file`), and so is a folder named like an image file, which
    is not searched."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        named_like_images = {d for d in dirnames if os.path.splitext(d)[1].lower() in image_suffixes()}
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in named_like_images)
        found.extend(os.path.join(dirpath, f) for f in sorted([*filenames, *named_like_images])
                     if not f.startswith("."))
    return found


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File name endings of the image formats Pillow reads (.jpg, .png, ...)."""
    return frozenset(Image.registered_extensions())


_capture = threading.local()
_hook_lock = threading.Lock()


def _show_or_capture(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning while imgclf's hook is installed: a warning raised on a thread that
    is inside `captured_warnings` is kept in that thread's list; any other goes on as before."""
    captured = getattr(_capture, "warnings", None)
    if captured is not None:
        captured.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
    else:
        _show_or_capture.previous(message, category, filename, lineno, file, line)


@contextmanager
def captured_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings shown on this thread while the block runs (Pillow's, while it
    decodes), leaving other threads' warnings and the process's filters alone. Thread-safe,
    unlike `warnings.catch_warnings`: the only shared change is a hook on
    `warnings.showwarning`, installed once (again if something replaced it) and never removed;
    the list is per thread. Warnings that the process's filters ignore are not seen, and those
    that they turn into errors are raised as before."""
    if warnings.showwarning is not _show_or_capture:
        with _hook_lock:
            if warnings.showwarning is not _show_or_capture:
                _show_or_capture.previous = warnings.showwarning
                warnings.showwarning = _show_or_capture
    outer = getattr(_capture, "warnings", None)
    _capture.warnings = found = []
    try:
        yield found
    finally:
        _capture.warnings = outer


def decode_image(path: str | BinaryIO, size: tuple[int, int], max_pixels: int | None = None,
                 resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Return the image at `path` (or in a binary file object) as a (height, width, 3) uint8
    array of the given size, resized by `resize` (RESIZE_MODES). Images of more than
    `max_pixels` (default MAX_IMAGE_PIXELS) pixels are refused unread; a path is read by
    `read_user_file`'s rule."""
    height, width = size
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if resize not in RESIZE_MODES:  # a caller's mistake, not a bad file
        raise ValueError(f"unknown resize mode {resize!r} (one of {', '.join(RESIZE_MODES)})")
    source = path if hasattr(path, "read") else io.BytesIO(read_user_file(path))
    try:
        # Pillow's own warnings (a palette image's transparency, a large image) are kept here, not
        # printed from decoding threads; the size limit below is ours, whatever Pillow warns.
        with captured_warnings(), Image.open(source) as img:
            if img.width * img.height > max_pixels:  # checked before any pixel is decoded
                raise Image.DecompressionBombError(
                    f"{img.width} x {img.height} pixels is more than the limit of {max_pixels}")
            img.seek(0)  # first frame of animated GIF/PNG/WebP
            if img.format == "JPEG":
                img.draft("RGB", (width, height))  # cheap DCT downscale for large JPEGs
            img.load()
            rgb = resize_image(to_rgb(img), (height, width), resize)
            array = np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large (decompression bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Warning) as exc:
        # Warning: one the process's filters turn into an error (python -W error)
        raise BadImage(f"cannot decode ({exc})") from None
    if array.shape != (height, width, 3):
        raise BadImage(f"unexpected decoded shape {array.shape}")
    return array


def resize_image(rgb: Image.Image, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> Image.Image:
    """`rgb` at (height, width) `size` by the RESIZE_MODES `resize`, with Pillow."""
    height, width = size
    if rgb.size == (width, height):
        return rgb
    if resize == "crop":
        return ImageOps.fit(rgb, (width, height), RESAMPLE)
    if resize == "pad":
        return ImageOps.pad(rgb, (width, height), RESAMPLE, color=(0, 0, 0))
    return rgb.resize((width, height), RESAMPLE)


def resize_array(array: np.ndarray, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """uint8 images (N, H, W, 3) at (height, width) `size` by the RESIZE_MODES `resize`,
    with Keras' image resize (which crops or pads to the aspect ratio the same way)."""
    if array.shape[1:3] == tuple(size):
        return array
    import keras

    out = np.empty((len(array), *size, 3), np.uint8)
    for start in range(0, len(array), DECODE_BATCH):  # chunks: no float copy of the whole set
        resized = keras.ops.image.resize(array[start:start + DECODE_BATCH].astype(np.float32), size,
                                         crop_to_aspect_ratio=resize == "crop", pad_to_aspect_ratio=resize == "pad",
                                         fill_value=0.0)
        out[start:start + DECODE_BATCH] = np.clip(np.round(keras.ops.convert_to_numpy(resized)), 0, 255)
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale the real range to 0-255 instead of clipping at 255.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
        if img.mode == "I" and values.max() <= 65535:
            top = 65535.0 if values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")  # P -> RGB would warn about transparency given as bytes
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on black; identical to dropping alpha for opaque images.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


@dataclass
class Decoded:
    """The usable files among those given, in their order."""

    pixels: np.ndarray | None  # (len(kept), H, W, 3) uint8, or None when not kept in memory
    kept: np.ndarray  # indices of the usable files among the paths given
    skipped: list[tuple[str, str]]  # (path, reason) of every unusable file


def decode_paths(paths: list[str], size: tuple[int, int], *, keep_pixels: bool = True,
                 verbose: int = 0, resize: str = DEFAULT_RESIZE) -> Decoded:
    """Decode every file, skip the unusable ones and name them in one warning; an error when
    none is usable."""
    pixels, ok, reasons = _decode_files(paths, size, keep_pixels=keep_pixels, verbose=verbose, resize=resize)
    skipped = [(p, r) for p, good, r in zip(paths, ok, reasons) if not good]
    report_skipped(skipped)
    kept = np.flatnonzero(ok)
    if len(kept) == 0:
        raise DataError(f"none of the {len(paths)} file(s) is a usable image")
    return Decoded(None if pixels is None else pixels[kept], kept, skipped)


def _decode_files(
    paths: list[str], size: tuple[int, int], *, keep_pixels: bool = True, verbose: int = 0, resize: str = DEFAULT_RESIZE
) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """Decode files in parallel, CHECK_BATCH per task on DECODE_THREADS threads (no
    TensorFlow: prediction on an exported model needs none). Returns (pixels or None, ok
    flags, reasons)."""
    n = len(paths)
    pixels = np.zeros((n, *size, 3), np.uint8) if keep_pixels else None
    ok = np.zeros(n, bool)
    reasons = [""] * n

    def decode_chunk(first: int) -> int:  # each task fills its own rows
        stop = min(first + CHECK_BATCH, n)
        for i in range(first, stop):
            try:
                image = decode_image(paths[i], size, resize=resize)
            except BadImage as exc:
                reasons[i] = str(exc)
                continue
            ok[i] = True
            if pixels is not None:
                pixels[i] = image
        return stop - first

    start, done = time.perf_counter(), 0
    progress = _progress(n, "decoding images") if verbose and n >= PROGRESS_FROM and _interactive() else None
    pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="imgclf-decode")
    try:
        for task in as_completed([pool.submit(decode_chunk, first) for first in range(0, n, CHECK_BATCH)]):
            done += task.result()
            if progress:
                progress(done)
    finally:  # on an error or Ctrl-C, the tasks not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)
    if verbose and n >= PROGRESS_FROM:
        print(f"decoded {n} files in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return pixels, ok, reasons


def decode_or_black(raw: bytes, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Streaming decode; files were checked when loading, so a failure here means the file
    changed on disk mid-training: train on black rather than crash hours in."""
    try:
        return decode_image(os.fsdecode(raw), size, resize=resize)
    except BadImage:
        return np.zeros((*size, 3), np.uint8)


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """One warning that names every skipped file."""
    if skipped:
        listing = "; ".join(f"{p} ({r})" for p, r in skipped)
        print(f"warning: skipped {len(skipped)} unusable file(s): {listing}", file=sys.stderr)


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _progress(total: int, what: str) -> Callable[[int], None]:
    """A count redrawn in place on stderr, at most every PROGRESS_SECONDS."""
    shown = [0.0]

    def update(done: int) -> None:
        now = time.perf_counter()
        if done == total or now - shown[0] >= PROGRESS_SECONDS:
            shown[0] = now
            print(f"\r{what}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    return update


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
