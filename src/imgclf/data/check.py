"""Is this data sound? (`imgclf check-data DIR|CSV`, and the cheap part of it before training.)

Reads every file once, in parallel: its SHA-256 (exact duplicates), whether Pillow decodes
it, its size, colour mode and format, and a perceptual hash (`imagehash.phash`, 64 bits)
for near-duplicates: pairs whose hashes differ in at most `near` bits, found through the
pigeonhole rule (split the hash into near + 1 chunks; two hashes that close agree on one
chunk) instead of comparing every pair.

Problems that would break training make the check fail: no usable image, fewer than two
classes, a class with fewer than two usable images. Everything else is a warning:
imbalance, undecodable files, duplicates (within a split, across train/test, and with
different labels), unusual sizes or modes.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MAX_IMAGE_PIXELS
from ..errors import DataError
from .decode import BadImage, captured_warnings, file_hash, read_user_file, to_rgb
from .sources import read_labels_csv, scan_folder

NEAR_BITS = 4  # perceptual hashes this close (of 64 bits) are near-duplicates
IMBALANCE_WARNING = 10.0  # largest class / smallest class above this earns a warning
MIN_PER_CLASS = 2  # a stratified split needs two images of every class
READ_THREADS = 8  # Pillow and hashlib release the GIL while they work
LISTED = 20  # items listed per problem in the printed table


@dataclass
class FileInfo:
    path: str
    label: str
    split: str  # "train" (or the only split) or "test"
    sha256: str = ""
    phash: int | None = None  # None: not decodable
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    error: str = ""


@dataclass
class DataCheck:
    """What `check_data` found; `problems` are fatal for training, `warnings` are not."""

    source: str
    files: list[FileInfo]
    per_class: dict[str, dict[str, int]]  # split -> class -> usable images
    imbalance: float  # largest / smallest class (usable images, training split)
    undecodable: list[tuple[str, str]]  # (path, reason)
    exact_duplicates: list[dict]  # {"sha256", "paths", "labels", "splits"}
    near_duplicates: list[dict]  # {"paths", "labels", "splits", "distance"}
    sizes: dict
    modes: dict[str, int]
    formats: dict[str, int]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source, "images": len(self.files), "per_class": self.per_class,
            "imbalance_ratio": self.imbalance, "undecodable": [{"path": p, "reason": r} for p, r in self.undecodable],
            "exact_duplicates": self.exact_duplicates, "near_duplicates": self.near_duplicates,
            "sizes": self.sizes, "modes": self.modes, "formats": self.formats,
            "problems": self.problems, "warnings": self.warnings,
        }


def list_source(source: str | Path) -> tuple[list[tuple[str, str, str]], str]:
    """(path, label, split) of every file of a folder (train/ and test/ inside are splits) or
    a CSV file list, and a description."""
    source = Path(source)
    if source.is_file():
        paths, labels = read_labels_csv(source)
        return [(p, lab, "train") for p, lab in zip(paths, labels)], f"labels file {source}"
    if not source.is_dir():
        raise DataError(f"not a folder or a CSV file: {source}")
    if (source / "train").is_dir() and (source / "test").is_dir():
        rows = []
        for split in ("train", "test"):
            paths, labels = scan_folder(source / split)
            rows += [(p, lab, split) for p, lab in zip(paths, labels)]
        return rows, f"folder {source} (train/ and test/)"
    paths, labels = scan_folder(source)
    return [(p, lab, "train") for p, lab in zip(paths, labels)], f"folder {source}"


def inspect_file(path: str, label: str, split: str, *, perceptual: bool = True) -> FileInfo:
    """One file's hash, decodability, size, mode and format (and perceptual hash)."""
    from PIL import Image

    info = FileInfo(path, label, split)
    try:
        content = read_user_file(path)  # regular files only, size-capped: nothing can block here
    except BadImage as exc:
        info.error = str(exc)
        return info
    info.sha256 = hashlib.sha256(content).hexdigest()
    try:
        with captured_warnings():  # per thread: this runs in a thread pool
            with Image.open(io.BytesIO(content)) as img:
                info.width, info.height, info.mode, info.format = img.width, img.height, img.mode, img.format or ""
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{img.width} x {img.height} pixels is more than the limit")
                img.load()
                if perceptual:
                    import imagehash

                    info.phash = int(str(imagehash.phash(to_rgb(img))), 16)
                else:
                    info.phash = 0
    except Exception as exc:  # Pillow raises many types for a bad file
        info.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'cannot decode'}"
        info.phash = None
    return info


def check_data(source: str | Path, *, near: int = NEAR_BITS, perceptual: bool = True) -> DataCheck:
    """Inspect every file of `source` (folder or CSV) and sum up what is wrong with it."""
    rows, description = list_source(source)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        files = list(pool.map(lambda row: inspect_file(*row, perceptual=perceptual), rows))
    return summarize_files(files, description, near=near if perceptual else -1)


def summarize_files(files: list[FileInfo], source: str, *, near: int = NEAR_BITS) -> DataCheck:
    """The DataCheck of already inspected files (near < 0: no near-duplicate search)."""
    good = [f for f in files if f.phash is not None]
    per_class: dict[str, dict[str, int]] = {}
    for split in sorted({f.split for f in files}):
        counts = Counter(f.label for f in good if f.split == split)
        per_class[split] = {name: counts.get(name, 0) for name in sorted({f.label for f in files})}
    train_counts = [n for n in per_class.get("train", {}).values()]
    imbalance = float(max(train_counts) / min(train_counts)) if train_counts and min(train_counts) else float("inf")
    widths = np.array([f.width for f in good]) if good else np.zeros(1)
    heights = np.array([f.height for f in good]) if good else np.zeros(1)
    check = DataCheck(
        source=source, files=files, per_class=per_class, imbalance=imbalance,
        undecodable=[(f.path, f.error) for f in files if f.phash is None],
        exact_duplicates=_exact_duplicates(good), near_duplicates=_near_duplicates(good, near) if near >= 0 else [],
        sizes={"width": _spread(widths), "height": _spread(heights),
               "distinct": len({(f.width, f.height) for f in good})},
        modes=dict(Counter(f.mode for f in good).most_common()),
        formats=dict(Counter(f.format for f in good).most_common()),
    )
    _judge(check)
    return check


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}


def _exact_duplicates(files: list[FileInfo]) -> list[dict]:
    groups: dict[str, list[FileInfo]] = defaultdict(list)
    for f in files:
        groups[f.sha256].append(f)
    return [{"sha256": digest, "paths": [f.path for f in group], "labels": [f.label for f in group],
             "splits": [f.split for f in group]}
            for digest, group in groups.items() if len(group) > 1]


def _near_duplicates(files: list[FileInfo], near: int) -> list[dict]:
    """Pairs of files (not exact copies) whose perceptual hashes differ in at most `near` bits."""
    hashes = np.array([f.phash for f in files], dtype=np.uint64)
    chunks = near + 1
    bounds = np.linspace(0, 64, chunks + 1).astype(int)
    pairs: set[tuple[int, int]] = set()
    for low, high in zip(bounds[:-1], bounds[1:]):
        keys = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        buckets: dict[int, list[int]] = defaultdict(list)
        for index, key in enumerate(keys.tolist()):
            buckets[key].append(index)
        for members in buckets.values():
            if len(members) < 2:
                continue
            members = np.array(members)
            distances = _popcount(hashes[members][:, None] ^ hashes[members][None, :])
            for a, b in zip(*np.nonzero(np.triu(distances <= near, k=1))):
                pairs.add((int(members[a]), int(members[b])))
    found = []
    for a, b in sorted(pairs):
        if files[a].sha256 == files[b].sha256:
            continue  # an exact duplicate, listed as such
        distance = int(_popcount(np.array([hashes[a] ^ hashes[b]], dtype=np.uint64))[0])
        found.append({"paths": [files[a].path, files[b].path], "labels": [files[a].label, files[b].label],
                      "splits": [files[a].split, files[b].split], "distance": distance})
    return found


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def _judge(check: DataCheck) -> None:
    usable = sum(sum(counts.values()) for counts in check.per_class.values())
    train = check.per_class.get("train", {})
    if usable == 0:
        check.problems.append("no usable image")
    elif sum(1 for n in train.values() if n > 0) < 2:
        check.problems.append("fewer than two classes with usable images: nothing to classify")
    small = [f"{name} ({n})" for name, n in train.items() if n < MIN_PER_CLASS]
    if small and usable:
        check.problems.append(f"classes with fewer than {MIN_PER_CLASS} usable images, too few to split: "
                              + ", ".join(small))
    if check.imbalance > IMBALANCE_WARNING and np.isfinite(check.imbalance):
        check.warnings.append(f"imbalanced classes: the largest has {check.imbalance:.1f}x the images of the "
                              "smallest (consider --class-weight balanced)")
    if check.undecodable:
        check.warnings.append(f"{len(check.undecodable)} undecodable file(s): training skips them")
    within = [d for d in check.exact_duplicates if len(set(d["splits"])) == 1]
    across = [d for d in check.exact_duplicates if len(set(d["splits"])) > 1]
    conflicting = [d for d in check.exact_duplicates if len(set(d["labels"])) > 1]
    if within:
        check.warnings.append(f"{len(within)} group(s) of identical files within a split "
                              "(they can land on both sides of the validation split)")
    if across:
        check.warnings.append(f"{len(across)} group(s) of identical files in both train/ and test/: "
                              "the test score is inflated")
    if conflicting:
        check.warnings.append(f"{len(conflicting)} group(s) of identical files with different labels")
    if check.near_duplicates:
        check.warnings.append(f"{len(check.near_duplicates)} pair(s) of near-duplicate images")


def format_check(check: DataCheck) -> str:
    """The printed report: classes table, then each finding with up to LISTED examples."""
    lines = [f"{check.source}: {len(check.files)} files"]
    splits = list(check.per_class)
    names = sorted({name for counts in check.per_class.values() for name in counts})
    width = max([5, *map(len, names)])
    lines.append(f"{'class':<{width}}" + "".join(f"  {s:>8}" for s in splits))
    for name in names:
        lines.append(f"{name:<{width}}" + "".join(f"  {check.per_class[s].get(name, 0):>8}" for s in splits))
    lines.append(f"imbalance (largest / smallest class): {check.imbalance:.2f}")
    size = check.sizes
    lines.append(f"sizes: width {size['width']['min']}-{size['width']['max']} (median {size['width']['median']}), "
                 f"height {size['height']['min']}-{size['height']['max']} (median {size['height']['median']}), "
                 f"{size['distinct']} distinct")
    lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in check.modes.items())
                 + "; formats: " + ", ".join(f"{m} {n}" for m, n in check.formats.items()))
    for path, reason in check.undecodable[:LISTED]:
        lines.append(f"undecodable: {path} ({reason})")
    for group in check.exact_duplicates[:LISTED]:
        lines.append("identical: " + ", ".join(f"{p} [{lab}, {s}]" for p, lab, s in
                                               zip(group["paths"], group["labels"], group["splits"])))
    for pair in check.near_duplicates[:LISTED]:
        lines.append(f"near-duplicates ({pair['distance']} bits): " + ", ".join(
            f"{p} [{lab}, {s}]" for p, lab, s in zip(pair["paths"], pair["labels"], pair["splits"])))
    lines += [f"warning: {w}" for w in check.warnings]
    lines += [f"problem: {p}" for p in check.problems]
    lines.append("result: " + ("FAIL, training would stop" if check.problems else
                               "ok" + (f", {len(check.warnings)} warning(s)" if check.warnings else "")))
    return "\n".join(lines)


def quick_check(train, val) -> list[str]:
    """The cheap part, before training (`train`, `val`: data.labelled.Images): imbalance, and
    identical files (by content) on both sides of the split. Returns the warnings, also
    printed to stderr."""
    notes = []
    names = train.class_names
    counts = np.bincount(train.labels, minlength=len(names))
    if counts.min() > 0 and counts.max() / counts.min() > IMBALANCE_WARNING:
        notes.append(f"imbalanced classes: {names[int(counts.argmax())]} has {counts.max()} training images, "
                     f"{names[int(counts.argmin())]} {counts.min()} (consider --class-weight balanced; "
                     "imgclf check-data for more)")
    if train.paths is not None and val.paths is not None and len(val):
        with ThreadPoolExecutor(READ_THREADS) as pool:
            seen = set(pool.map(_digest, train.paths))
            leaked = sum(1 for digest in pool.map(_digest, val.paths) if digest in seen)
        if leaked:
            notes.append(f"{leaked} validation image(s) are identical to training images: the validation score "
                         "is inflated (imgclf check-data lists them)")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return notes


def _digest(path: str) -> str:
    try:
        return file_hash(path)
    except OSError:
        return f"unreadable:{os.fsencode(path)!r}"
