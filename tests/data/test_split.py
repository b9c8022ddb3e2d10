import numpy as np
import pytest

from imgclf import DataError
from imgclf.data.split import split_indices, stratified_sample


def test_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(4), 25)
    train, val = split_indices(labels, 0.2, seed=3)
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100
    again = split_indices(labels, 0.2, seed=3)
    assert train.tolist() == again[0].tolist()




def test_stratified_sample_keeps_proportions_and_refuses_fewer_than_the_classes():
    labels = np.repeat(np.arange(3), [30, 60, 90])
    keep = stratified_sample(labels, 18, seed=0)
    assert np.bincount(labels[keep]).tolist() == [3, 6, 9]
    assert stratified_sample(labels, 500, seed=0).tolist() == list(range(180))
    with pytest.raises(DataError, match="smaller than the number of classes"):
        stratified_sample(labels, 2, seed=0)
