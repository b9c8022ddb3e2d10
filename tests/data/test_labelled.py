import numpy as np
import pytest

from imgclf import DataError
from imgclf.data.labelled import Images, encode_labels


def test_string_labels_are_encoded_in_sorted_order():
    labels, names = encode_labels(["dog", "cat", "emu", "cat"])
    assert names == ["cat", "dog", "emu"] and labels.tolist() == [1, 0, 2, 0] and labels.dtype == np.int32


def test_labels_map_onto_given_classes_and_unknown_ones_are_named():
    labels, names = encode_labels(["emu", "cat"], ["cat", "dog", "emu"])
    assert labels.tolist() == [2, 0] and names == ["cat", "dog", "emu"]
    with pytest.raises(DataError, match="yak"):
        encode_labels(["cat", "yak"], ["cat", "dog"])


def test_with_classes_reindexes_to_a_models_class_order():
    images = Images(np.array([0, 1, 1], np.int32), ["dog", "emu"], np.zeros((3, 2, 2, 3), np.uint8), size=(2, 2))
    aligned = images.with_classes(["cat", "dog", "emu"])
    assert aligned.labels.tolist() == [1, 2, 2] and aligned.class_names == ["cat", "dog", "emu"]
    assert aligned.array is images.array
    assert images.with_classes(["dog", "emu"]) is images
    with pytest.raises(DataError, match="emu"):
        images.with_classes(["cat", "dog"])


def test_subset_keeps_pixels_paths_and_labels_together():
    images = Images(np.array([0, 1, 0], np.int32), ["a", "b"], np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1)
                    * np.ones((1, 2, 2, 3), np.uint8), paths=["x", "y", "z"], size=(2, 2))
    part = images.subset(np.array([2, 1]))
    assert part.labels.tolist() == [0, 1] and part.paths == ["z", "y"] and part.array[:, 0, 0, 0].tolist() == [2, 1]
    assert part.names() == ["z", "y"]
