"""Where labelled images come from: CIFAR-10 through Keras, a folder with one subfolder per
class (with train/ and test/ inside as splits), or a CSV file list of path,label rows."""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
from pathlib import Path

import numpy as np

from ..config import DATASETS, TrainConfig
from ..errors import DataError
from .decode import BadImage, decode_paths, read_user_file, resize_array, walk_files
from .labelled import Images, LoadedData, encode_labels
from .split import stratified_sample

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
# keras.datasets.cifar10 downloads from here
CIFAR10_HOST = (os.environ.get("IMGCLF_CIFAR10_HOST", "www.cs.toronto.edu"), 443)
NETWORK_PROBE_TIMEOUT = 8.0  # seconds to decide that the download host is unreachable


def load_data(config: TrainConfig) -> LoadedData:
    """Load what `config` points at: a CSV file list, a folder, or CIFAR-10."""
    size = config.size
    if config.labels:
        paths, names = read_labels_csv(config.labels)
        return LoadedData(load_files(paths, names, size, config), None, f"labels file {config.labels}")
    if config.data_dir:
        root = Path(config.data_dir)
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
        if (root / "train").is_dir() and (root / "test").is_dir():
            labelled = load_files(*scan_folder(root / "train"), size, config)
            test = load_files(*scan_folder(root / "test"), size, config, class_names=labelled.class_names,
                              known_as="the classes of train/", sample=False)
            return LoadedData(labelled, test, f"folder {root} (train/ and test/)")
        return LoadedData(load_files(*scan_folder(root), size, config), None, f"folder {root}")
    if config.dataset == "cifar10":  # the one entry of config.DATASETS
        return load_cifar10(config)
    raise DataError(f"unknown dataset '{config.dataset}' (built in: {', '.join(DATASETS)}); "
                    "or give --data-dir / --labels")


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
    size, resize = config.size, config.resize
    labelled = Images(y_train.reshape(-1).astype(np.int32), list(CIFAR10_CLASSES),
                      resize_array(x_train, size, resize), size=size, resize=resize)
    test = Images(y_test.reshape(-1).astype(np.int32), list(CIFAR10_CLASSES), resize_array(x_test, size, resize),
                  size=size, resize=resize)
    if config.limit:
        labelled = labelled.subset(stratified_sample(labelled.labels, config.limit, config.data_seed))
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
    classes = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    paths: list[str] = []
    labels: list[str] = []
    for name in classes:
        files = walk_files(root / name)
        paths += files
        labels += [name] * len(files)
    if not paths:
        loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        hint = " (images must be in one subfolder per class)" if loose else ""
        raise DataError(f"no images found in {root}{hint}")
    return paths, labels


def read_labels_csv(csv_path: str | Path) -> tuple[list[str], list[str]]:
    """Read `path,label` rows; relative paths resolve against the CSV's folder."""
    csv_path = Path(csv_path)
    try:
        rows = list(csv.reader(io.StringIO(read_user_file(csv_path).decode("utf-8-sig"), newline="")))
    except BadImage as exc:  # the same rule as image files: no FIFO or device can block the read
        raise DataError(f"cannot read labels file {csv_path}: {exc}") from None
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


def load_files(
    paths: list[str],
    label_names: list[str],
    size: tuple[int, int],
    config: TrainConfig,
    *,
    class_names: list[str] | None = None,
    known_as: str = "the known classes",
    sample: bool = True,
) -> Images:
    """Encode string labels, optionally sample, then decode (into memory when it fits)."""
    labels, class_names = encode_labels(label_names, class_names, known_as=known_as)
    if sample and config.limit and config.limit < len(labels):
        keep = stratified_sample(labels, config.limit, config.data_seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    fits = len(paths) * size[0] * size[1] * 3 <= config.memory_limit_mb * 2**20
    decoded = decode_paths(paths, size, keep_pixels=fits, verbose=config.verbose, resize=config.resize)
    return Images(
        labels=labels[decoded.kept],
        class_names=class_names,
        array=decoded.pixels,
        paths=[paths[i] for i in decoded.kept],
        skipped=decoded.skipped,
        size=size,
        resize=config.resize,
    )


def evaluation_images(config: TrainConfig) -> tuple[Images, str]:
    """The images to evaluate (or calibrate) on: a source's test split when it has one, else
    all of it; and where they come from."""
    data = load_data(config)
    if data.test is not None:
        return data.test, f"{data.source}, test split"
    return data.labelled, data.source
