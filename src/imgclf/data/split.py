"""Checking that labelled images can be split, and splitting them (scikit-learn, stratified)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import DataError
from .labelled import Images

MIN_IMAGES_PER_CLASS = 2  # a stratified split needs at least one image on each side


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

