"""Folders far larger than memory, and two workers against one (issue 16). Not a test: it
writes the figures docs/results.md quotes.

    python benchmarks/large_folder.py make DIR [--images 200000]       generate the JPEG folder
    python benchmarks/large_folder.py listing WORK [--files 1000000]   cost of listing a million files
    python benchmarks/large_folder.py pipeline DIR --cache CACHE       input pipeline alone, images/s
    python benchmarks/large_folder.py train DIR --out OUT              imgclf train: memory, images/s,
                                                                       --cache, 2 workers against 1
    python benchmarks/large_folder.py workers DIR --out OUT            only 2 workers against 1

Every figure goes to stdout and, as JSON, to the file named by --json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 32


def _make_class(args) -> int:
    """Images of one class: a class-specific colour and stripe orientation, under noise,
    random shifts and brightness (learnable, not trivial)."""
    root, label, count, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / f"class{label}"
    folder.mkdir(parents=True, exist_ok=True)
    hue = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    angle = np.pi * label / CLASSES
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.6 + phase)[..., None]
        pixels = hue * (0.6 + 0.4 * stripes) * rng.uniform(0.6, 1.3) + rng.normal(0, 40, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)
    return count


def make(root: Path, images: int) -> dict:
    started = time.perf_counter()
    per_class = images // CLASSES
    with Pool(os.cpu_count()) as pool:
        done = sum(pool.map(_make_class, [(str(root), c, per_class, c) for c in range(CLASSES)]))
    size = sum(f.stat().st_size for f in root.rglob("*.jpg"))
    return {"images": done, "bytes": size, "seconds": round(time.perf_counter() - started, 1)}


def listing(work: Path, files: int) -> dict:
    """Time and memory of listing `files` files in CLASSES class folders (empty files: the
    listing reads names, not contents) and encoding and splitting their labels."""
    import tracemalloc

    from imgclf.data.labelled import encode_labels
    from imgclf.data.sources import scan_folder
    from imgclf.data.split import split_indices

    root = work / "million"
    if not root.exists():
        for c in range(CLASSES):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(files // CLASSES):
                os.close(os.open(root / f"class{c}" / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY))
    tracemalloc.start()
    started = time.perf_counter()
    paths, names = scan_folder(root)
    scanned = time.perf_counter()
    labels, classes = encode_labels(names)
    train, val = split_indices(labels, 0.2, 42)
    finished = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    return {"files": len(paths), "scan_seconds": round(scanned - started, 2),
            "encode_split_seconds": round(finished - scanned, 2), "python_peak_mb": round(peak / 2**20, 1),
            "bytes_per_file": round(peak / len(paths))}


def pipeline(root: Path, cache: Path) -> dict:
    """The input pipeline alone: listing and checking every file, then one epoch of training
    batches decoded from the files, then the same from --cache (filled first)."""
    import tensorflow as tf  # noqa: F401 (started before the clock)

    from imgclf import TrainConfig
    from imgclf.data.pipeline import fill_cache, make_train_dataset
    from imgclf.data.sources import load_data
    from imgclf.data.split import split_indices
    from imgclf.models.augment import flip_translate

    out = {}
    started = time.perf_counter()
    images = load_data(TrainConfig(data_dir=str(root), image_size=SIZE, memory_limit_mb=0, verbose=0)).labelled
    out["load_seconds"] = round(time.perf_counter() - started, 1)  # listing + one check of every file
    train = images.subset(split_indices(images.labels, 0.2, 42)[0])

    def epoch(**kwargs) -> float:
        dataset = make_train_dataset(train, 512, seed=1, epochs=1, augment=flip_translate, **kwargs)
        started, count = time.perf_counter(), 0
        for _, y in dataset:
            count += int(y.shape[0])
        return count / (time.perf_counter() - started)

    out["decode_images_per_s"] = round(epoch())
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    fill_cache(train, str(cache), 1)
    out["cache_fill_seconds"] = round(time.perf_counter() - started, 1)
    out["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    out["cached_images_per_s"] = round(epoch(cache=str(cache)))
    out["train_images"] = len(train)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _imgclf(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    command = ["/usr/bin/time", "-f", "MAXRSS_KB %M", str(Path(sys.executable).parent / "imgclf"), *args]
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})})


def _finish(process: subprocess.Popen, log: Path) -> int:
    if process.wait() != 0:
        raise SystemExit(f"failed ({process.returncode}): see {log}")
    return int(log.read_text().rsplit("MAXRSS_KB", 1)[1].split()[0])


def _epochs(run: Path) -> list[dict]:
    import csv

    with open(run / "history.csv") as handle:
        return [{k: float(v) for k, v in row.items() if k in ("epoch", "seconds", "val_accuracy")}
                for row in csv.DictReader(handle)]


def train(root: Path, out: Path, limit: int) -> dict:
    """imgclf train on the folder, streamed (--memory-limit-mb 0): one epoch from the files,
    two with --cache, then 2 worker processes against 1 on a `limit`-image sample."""

    results = {}
    common = ["train", "--data-dir", str(root), "--model", "fast-tiny", "--memory-limit-mb", "0",
              "--distribute", "none"]
    for name, extra in (("files", ["--epochs", "1"]),
                        ("cache", ["--epochs", "2", "--cache", str(out / "cache")])):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.rmtree(out / "cache", ignore_errors=True)
        log = out / f"{name}.log"
        started = time.perf_counter()
        rss = _finish(_imgclf([*common, *extra, "--out", str(out / name)], log), log)
        config = json.loads((out / name / "config.json").read_text())
        data = json.loads((out / name / "data.json").read_text()) if (out / name / "data.json").exists() else {}
        results[name] = {"peak_rss_mb": round(rss / 1024), "wall_seconds": round(time.perf_counter() - started),
                         "epochs": _epochs(out / name), "batch_size": config["batch_size"],
                         "train_images": data.get("train_images")}
        print(name, json.dumps(results[name]), flush=True)
    return {**results, **workers(root, out, limit)}


def workers(root: Path, out: Path, limit: int) -> dict:
    """2 worker processes against 1 on a `limit`-image sample of the folder."""
    from imgclf.training.distribute import local_workers

    results = {}
    sample = ["train", "--data-dir", str(root), "--model", "fast-tiny", "--memory-limit-mb", "0", "--limit", str(limit),
              "--epochs", "2", "--batch-size", "512"]
    shutil.rmtree(out / "one", ignore_errors=True)
    log = out / "one.log"
    rss = _finish(_imgclf([*sample, "--distribute", "none", "--out", str(out / "one")], log), log)
    results["one_worker"] = {"peak_rss_mb": round(rss / 1024), "epochs": _epochs(out / "one")}
    addresses = local_workers(2)
    processes = []
    for index in (0, 1):
        shutil.rmtree(out / f"two{index}", ignore_errors=True)
        log = out / f"two{index}.log"
        processes.append((_imgclf([*sample, "--workers", addresses, "--worker-index", str(index),
                                   "--out", str(out / f"two{index}")], log), log))
    rss = [_finish(p, log) for p, log in processes]
    results["two_workers"] = {"peak_rss_mb": [round(r / 1024) for r in rss], "epochs": _epochs(out / "two0"),
                              "worker1_wrote": (out / "two1").exists()}
    results["communication"] = communication(limit)
    return results


def communication(images: int) -> dict:
    """Bytes each worker sends per step for the all-reduce of the `fast-tiny` model's gradients
    (a ring all-reduce: 2 (W - 1) / W of the gradient bytes, float32), for W = 2."""
    from imgclf.models.registry import create_model

    model = create_model("fast-tiny", (SIZE, SIZE, 3), CLASSES,
                         train_pixels=np.random.default_rng(0).integers(0, 255, (512, SIZE, SIZE, 3), np.uint8))
    parameters = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    gradient_bytes = parameters * 4
    return {"trainable_parameters": parameters, "gradient_mb": round(gradient_bytes / 2**20, 2),
            "sent_per_worker_per_step_mb": round(2 * (2 - 1) / 2 * gradient_bytes / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("make", "listing", "pipeline", "train", "workers"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--limit", type=int, default=20_000, help="images of the 2-workers-against-1 runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.what == "make":
        result = make(args.folder, args.images)
    elif args.what == "listing":
        result = listing(args.folder, args.files)
    elif args.what == "pipeline":
        result = pipeline(args.folder, args.cache or args.folder.parent / "pipeline-cache")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        result = (train if args.what == "train" else workers)(args.folder, args.out, args.limit)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
