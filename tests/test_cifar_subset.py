"""Training really learns: ~2,000 real CIFAR-10 images, a few epochs, far above chance (10%)."""

import json

import pytest

from conftest import CIFAR10_TRAIN
from imgclf import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not CIFAR10_TRAIN.is_dir(), reason="needs ../shared/datasets/cifar10/train")
def test_seed_model_learns_real_cifar10(tmp_path):
    run = train(TrainConfig(data_dir=str(CIFAR10_TRAIN), limit=2000, epochs=8, batch_size=32,
                            learning_rate=2e-3, out=str(tmp_path / "run"), verbose=0))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 400
    assert metrics["accuracy"] >= 0.35, metrics
