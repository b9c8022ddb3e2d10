"""Labelled images in memory (uint8) or on disk (paths), and the one class-name -> index mapping."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.preprocessing import LabelEncoder

from ..config import DEFAULT_RESIZE
from ..errors import DataError


@dataclass
class Images:
    """Labelled images: decoded in memory as uint8, or file paths decoded on the fly."""

    labels: np.ndarray  # int32 class indices, shape (N,)
    class_names: list[str]  # index -> name
    array: np.ndarray | None = None  # (N, H, W, 3) uint8 when held in memory
    paths: list[str] | None = None  # file of each image (None for built-in arrays)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) not usable
    size: tuple[int, int] = (32, 32)  # (height, width) of every image
    resize: str = DEFAULT_RESIZE  # how files of another shape were or will be resized (config.RESIZE_MODES)

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
            resize=self.resize,
        )

    def names(self) -> list[str]:
        """A name for each image: its path, or its index in the source arrays."""
        return list(self.paths) if self.paths is not None else [str(i) for i in range(len(self))]

    def with_classes(self, class_names: list[str]) -> "Images":
        """The same images, labels re-indexed to `class_names` (e.g. a model's class order)."""
        if list(class_names) == list(self.class_names):
            return self
        labels, _ = encode_labels([self.class_names[i] for i in self.labels], class_names,
                                  known_as="the model's classes")
        return Images(labels, list(class_names), self.array, self.paths, self.skipped, self.size,
                      self.resize)


@dataclass
class LoadedData:
    labelled: Images  # the labelled training data, split into train/validation later
    test: Images | None  # a separate test split, when the source has one
    source: str  # human-readable description of where the data came from


def encode_labels(label_names: list[str], class_names: list[str] | None = None, *,
                  known_as: str = "the known classes") -> tuple[np.ndarray, list[str]]:
    """(int32 class indices, class names). Without `class_names`, the classes are the sorted
    distinct labels (scikit-learn's LabelEncoder); with them, every label must be one
    (`known_as` names them in the error)."""
    if class_names is None:
        encoder = LabelEncoder().fit(label_names)
        return encoder.transform(label_names).astype(np.int32), [str(c) for c in encoder.classes_]
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(label_names) - set(index))
    if unknown:
        raise DataError(f"class(es) not among {known_as} ({', '.join(class_names[:5])}"
                        f"{', ...' if len(class_names) > 5 else ''}): {', '.join(unknown[:5])}")
    return np.array([index[n] for n in label_names], dtype=np.int32), list(class_names)
