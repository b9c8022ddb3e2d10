"""Loading labelled images (CIFAR-10 from Keras, a class-per-folder tree, a CSV
file list), splitting them, and feeding them to Keras through `tf.data`.

Images stay uint8 until they reach the model: scaling to [0, 1] is the model's
first layer (`Rescaling(1/255)`), so it can never happen twice.
"""

from __future__ import annotations

import csv
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder

from .config import TrainConfig
from .errors import DataError
from .images import BadImage, decode_image

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
CIFAR10_HOST = (os.environ.get("IMGCLF_CIFAR10_HOST", "www.cs.toronto.edu"), 443)  # keras.datasets.cifar10 downloads from here
NETWORK_PROBE_TIMEOUT = 8.0  # seconds to decide that the download host is unreachable
DECODE_BATCH = 256  # images per chunk when decoding a folder into memory
MIN_IMAGES_PER_CLASS = 2  # a stratified split needs at least one image on each side


@dataclass
class Images:
    """Labelled images: decoded in memory as uint8, or file paths decoded on the fly."""

    labels: np.ndarray  # int32 class indices, shape (N,)
    class_names: list[str]  # index -> name
    array: np.ndarray | None = None  # (N, H, W, 3) uint8 when held in memory
    paths: list[str] | None = None  # file of each image (None for built-in arrays)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) not usable
    size: tuple[int, int] = (32, 32)  # (height, width) of every image

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.array is not None

    def subset(self, index: np.ndarray) -> "Images":
        return Images(
            labels=self.labels[index],
            class_names=self.class_names,
            array=None if self.array is None else self.array[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            size=self.size,
        )

    def names(self) -> list[str]:
        """A name for each image: its path, or its index in the source arrays."""
        return list(self.paths) if self.paths is not None else [str(i) for i in range(len(self))]


@dataclass
class LoadedData:
    labelled: Images  # the labelled training data, split into train/validation later
    test: Images | None  # a separate test split, when the source has one
    source: str  # human-readable description of where the data came from


# ----------------------------------------------------------------------------- sources


def load_data(config: TrainConfig, *, role: str = "train") -> LoadedData:
    """Load what `config` points at. `role="evaluate"` puts a folder's images in `test`."""
    size = (config.image_size, config.image_size)
    if config.labels:
        paths, names = read_labels_csv(config.labels)
        labelled = load_files(paths, names, size, config)
        return LoadedData(labelled, None, f"labels file {config.labels}")
    if config.data_dir:
        root = Path(config.data_dir)
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
        if (root / "train").is_dir() and (root / "test").is_dir():
            paths, names = scan_folder(root / "train")
            labelled = load_files(paths, names, size, config)
            tpaths, tnames = scan_folder(root / "test")
            test = load_files(tpaths, tnames, size, config, class_names=labelled.class_names, sample=False)
            return LoadedData(labelled, test, f"folder {root} (train/ and test/)")
        paths, names = scan_folder(root)
        return LoadedData(load_files(paths, names, size, config), None, f"folder {root}")
    if config.dataset == "cifar10":
        return load_cifar10(config)
    raise DataError(f"unknown dataset '{config.dataset}' (built in: cifar10); or give --data-dir / --labels")


def load_cifar10(config: TrainConfig) -> LoadedData:
    """CIFAR-10 through the real Keras loader; fails fast when it cannot download."""
    import keras

    if not _keras_cache_has("cifar-10-batches-py"):
        _require_network(CIFAR10_HOST, "CIFAR-10")
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # urllib, tarfile and hash errors all end up here
        raise DataError(
            f"cannot load CIFAR-10 from Keras ({type(exc).__name__}: {exc}); "
            "train on local images with --data-dir DIR or --labels FILE.csv"
        ) from None
    size = (config.image_size, config.image_size)
    labelled = Images(y_train.reshape(-1).astype(np.int32), list(CIFAR10_CLASSES), _resize_array(x_train, size), size=size)
    test = Images(y_test.reshape(-1).astype(np.int32), list(CIFAR10_CLASSES), _resize_array(x_test, size), size=size)
    if config.limit:
        labelled = labelled.subset(stratified_sample(labelled.labels, config.limit, config.seed))
    return LoadedData(labelled, test, "keras.datasets.cifar10")


def _keras_cache_has(name: str) -> bool:
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return any((base / "datasets").glob(f"{name}*")) if (base / "datasets").is_dir() else False


def _require_network(host: tuple[str, int], what: str) -> None:
    """Raise DataError within NETWORK_PROBE_TIMEOUT seconds when `host` is unreachable.

    The probe runs in a daemon thread because name resolution ignores socket timeouts.
    """
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=NETWORK_PROBE_TIMEOUT).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_PROBE_TIMEOUT + 1)
    problem = outcome[0] if outcome else TimeoutError("timed out")
    if problem is not None:
        raise DataError(
            f"cannot download {what}: {host[0]} is unreachable ({problem}); "
            "this machine needs local data: --data-dir DIR (one subfolder per class) or --labels FILE.csv"
        )


def scan_folder(root: Path) -> tuple[list[str], list[str]]:
    """Files under `root/<class>/` (recursively), with their class folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if _is_class_dir(p))
    paths: list[str] = []
    labels: list[str] = []
    for name in classes:
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith("."):
                    paths.append(os.path.join(dirpath, filename))
                    labels.append(name)
    if not paths:
        loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        hint = " (images must be in one subfolder per class)" if loose else ""
        raise DataError(f"no images found in {root}{hint}")
    return paths, labels


def _is_class_dir(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_dir()


def read_labels_csv(csv_path: str | Path) -> tuple[list[str], list[str]]:
    """Read `path,label` rows; relative paths resolve against the CSV's folder."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"cannot read labels file {csv_path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"labels file {csv_path} is not UTF-8 text") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    paths, labels = [], []
    for line, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{csv_path}: row {line} needs two columns, path and label (got {row})")
        path = Path(row[0].strip())
        paths.append(str(path if path.is_absolute() else csv_path.parent / path))
        labels.append(row[1].strip())
    if not paths:
        raise DataError(f"labels file {csv_path} has no rows")
    return paths, labels


# ----------------------------------------------------------------------------- decoding


def load_files(
    paths: list[str],
    label_names: list[str],
    size: tuple[int, int],
    config: TrainConfig,
    *,
    class_names: list[str] | None = None,
    sample: bool = True,
) -> Images:
    """Encode string labels, optionally sample, then decode (into memory when it fits)."""
    if class_names is None:
        encoder = LabelEncoder().fit(label_names)
        class_names = [str(c) for c in encoder.classes_]
        labels = encoder.transform(label_names).astype(np.int32)
    else:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(label_names) - set(index))
        if unknown:
            raise DataError(f"classes not seen in training: {', '.join(unknown[:5])}")
        labels = np.array([index[n] for n in label_names], dtype=np.int32)
    if sample and config.limit and config.limit < len(labels):
        keep = stratified_sample(labels, config.limit, config.seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    fits = len(paths) * size[0] * size[1] * 3 <= config.memory_limit_mb * 2**20
    array, ok, reasons = decode_files(paths, size, keep_pixels=fits, verbose=config.verbose)
    skipped = [(p, r) for p, good, r in zip(paths, ok, reasons) if not good]
    report_skipped(skipped)
    good = np.flatnonzero(ok)
    if len(good) == 0:
        raise DataError(f"no decodable images among {len(paths)} files")
    return Images(
        labels=labels[good],
        class_names=class_names,
        array=array[good] if fits else None,
        paths=[paths[i] for i in good],
        skipped=skipped,
        size=size,
    )


def decode_files(
    paths: list[str], size: tuple[int, int], *, keep_pixels: bool = True, verbose: int = 0
) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """Decode files in parallel with tf.data. Returns (pixels or None, ok flags, reasons)."""
    import tensorflow as tf

    height, width = size
    n = len(paths)
    pixels = np.zeros((n, height, width, 3), np.uint8) if keep_pixels else None
    ok = np.zeros(n, bool)
    reasons = [""] * n
    if n == 0:
        return pixels, ok, reasons

    def decode_one(raw: bytes) -> tuple[np.ndarray, bool, bytes]:
        try:
            return decode_image(os.fsdecode(raw), size), True, b""
        except BadImage as exc:
            return np.zeros((height, width, 3), np.uint8), False, str(exc).encode()

    def tf_decode(path):
        image, good, reason = tf.numpy_function(decode_one, [path], [tf.uint8, tf.bool, tf.string])
        return image, good, reason

    dataset = (
        tf.data.Dataset.from_tensor_slices(np.array([os.fsencode(p) for p in paths], dtype=object))
        .map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(DECODE_BATCH)
        .prefetch(2)
    )
    start, done = time.perf_counter(), 0
    progress = _progress(n, "decoding images") if verbose and n >= 5000 and _interactive() else None
    for images, good, why in dataset.as_numpy_iterator():
        stop = done + len(good)
        if pixels is not None:
            pixels[done:stop] = images
        ok[done:stop] = good
        for i, text in enumerate(why):
            if text:
                reasons[done + i] = text.decode(errors="replace")
        done = stop
        if progress:
            progress.update(done)
    if verbose and n >= 5000:
        print(f"decoded {n} files in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return pixels, ok, reasons


def _decode_or_black(raw: bytes, size: tuple[int, int]) -> np.ndarray:
    """Streaming decode; files were checked when loading, so a failure here means the file
    changed on disk mid-training: train on black rather than crash hours in."""
    try:
        return decode_image(os.fsdecode(raw), size)
    except BadImage:
        return np.zeros((*size, 3), np.uint8)


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _progress(total: int, what: str):
    import keras

    print(what, file=sys.stderr)
    return keras.utils.Progbar(total, unit_name="image")


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """One warning that names every skipped file."""
    if skipped:
        listing = "; ".join(f"{p} ({r})" for p, r in skipped)
        print(f"warning: skipped {len(skipped)} unusable file(s): {listing}", file=sys.stderr)


def _resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if array.shape[1:3] == size:
        return array
    import tensorflow as tf

    return tf.cast(tf.round(tf.image.resize(array, size)), tf.uint8).numpy()


# ----------------------------------------------------------------------------- splitting


def check_classes(images: Images) -> None:
    """At least two classes, each with enough images to appear on both sides of a split."""
    counts = np.bincount(images.labels, minlength=len(images.class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = images.class_names[present[0]] if len(present) else "none"
        raise DataError(f"need at least two classes to train a classifier (found one: {only})")
    small = [f"{images.class_names[i]} ({counts[i]})" for i in present if counts[i] < MIN_IMAGES_PER_CLASS]
    if small:
        raise DataError(
            f"too few images to split in class(es) {', '.join(small)}: need at least {MIN_IMAGES_PER_CLASS} each"
        )


def split_indices(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices with scikit-learn's train_test_split."""
    index = np.arange(len(labels))
    try:
        train, val = train_test_split(index, test_size=val_split, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} images with val_split={val_split}: {exc}") from None
    return np.sort(train), np.sort(val)


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` items with the class proportions of `labels`."""
    if count >= len(labels):
        return np.arange(len(labels))
    classes = len(np.unique(labels))
    if count < classes:
        raise DataError(f"limit={count} is smaller than the number of classes ({classes})")
    keep, _ = train_test_split(np.arange(len(labels)), train_size=count, stratify=labels, random_state=seed)
    return np.sort(keep)


# ----------------------------------------------------------------------------- tf.data


def make_dataset(images: Images, batch_size: int):
    """Batches of (float32 0-255 pixels, int32 labels) in order, prefetched: for evaluation."""
    import tensorflow as tf

    load = _batch_loader(images)

    def finish(index):
        x, y = load(index)
        return tf.cast(x, tf.float32), y

    dataset = tf.data.Dataset.range(len(images)).batch(batch_size)
    return dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_train_dataset(images: Images, batch_size: int, *, seed: int, epochs: int, first_epoch: int = 0,
                       augment=None):
    """Shuffled (and augmented) training batches for epochs `first_epoch` .. `epochs - 1`,
    one epoch after the other, `train_steps(len(images), batch_size)` per epoch (pass it
    as `steps_per_epoch` to `model.fit`). Only full batches: the few images left over
    change every epoch. A dataset smaller than one batch gives one batch of everything.

    The order and the augmentation of epoch `e` depend only on (`seed`, `e`): stateless
    random ops, no hidden state. A resumed run sees exactly the batches the uninterrupted
    run would have seen. `augment(uint8 batch, seed, index, epoch) -> batch` gets a
    2-element seed tensor, the images' indices and the epoch, and must use stateless
    random ops.
    """
    import tensorflow as tf

    n = len(images)
    load = _batch_loader(images)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=[seed, epoch])
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=n >= batch_size)
        return batches.enumerate().map(lambda step, index: (epoch, step, index))

    def finish(epoch, step, index):
        x, y = load(index)
        if augment is not None:
            x = augment(x, tf.stack([tf.constant(seed, tf.int64), epoch * 1_000_003 + step]), index, epoch)
        return tf.cast(x, tf.float32), y

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_steps(n: int, batch_size: int) -> int:
    """Steps per epoch of `make_train_dataset`: full batches only."""
    return max(1, n // batch_size)


def steps_per_call(steps_per_epoch: int, most: int) -> int:
    """The largest divisor of `steps_per_epoch` that is at most `most` (both >= 1): Keras'
    `steps_per_execution`. It must divide the epoch, or the last call of an epoch would
    take batches of the next one from the continuous training stream."""
    return max(k for k in range(1, min(most, steps_per_epoch) + 1) if steps_per_epoch % k == 0)


def _batch_loader(images: Images):
    """index batch -> (uint8 pixels, int32 labels): a gather from the uint8 array held in
    memory, or decoding the files of the batch."""
    import tensorflow as tf

    labels = tf.constant(images.labels)
    if images.in_memory:
        pixels = tf.constant(images.array)

        def load(index):
            return tf.gather(pixels, index), tf.gather(labels, index)
        return load
    paths = tf.constant(np.array([os.fsencode(p) for p in images.paths], dtype=object))
    height, width = images.size

    def decode(raw_paths):  # batches are never empty
        return np.stack([_decode_or_black(raw, (height, width)) for raw in raw_paths])

    def load(index):
        batch = tf.numpy_function(decode, [tf.gather(paths, index)], tf.uint8)
        batch.set_shape((None, height, width, 3))
        return batch, tf.gather(labels, index)
    return load
