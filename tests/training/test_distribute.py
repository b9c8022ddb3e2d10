"""Training under tf.distribute on CPU: MirroredStrategy over two logical CPU devices (what
Keras' own tests do) against one device at the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from imgclf import ImgclfError, TrainConfig
from imgclf.training.distribute import tf_config

pytestmark = pytest.mark.slow  # trainings in a subprocess (the CPU split must precede TensorFlow's start)

# A recipe with no randomness inside the model and no BatchNorm (whose statistics are per
# replica by design), in float32: two devices must then compute what one device computes.
SCRIPT = """
import json, os, sys
os.environ["IMGCLF_LOGICAL_CPUS"] = "2"
from imgclf.training.distribute import split_cpu
split_cpu()
import keras
from imgclf.models import recipes, registry
from imgclf.models.recipes import Recipe, RecipeDefaults

def plain(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(num_classes, activation="softmax")])

def sgd(lr, steps, epochs, backbone_lr=1.0):
    return keras.optimizers.SGD(lr)

registry.RECIPES["plain"] = Recipe(build=plain, make_optimizer=sgd)
recipes.RECIPE_DEFAULTS["plain"] = RecipeDefaults(4, 16, 0.05, False, "test recipe")
from imgclf import TrainConfig, train
runs = {}
for distribute in ("mirrored", "none"):
    run = train(TrainConfig(data_dir=sys.argv[1], model="plain", image_size=16, batch_size=16, precision="float32",
                            distribute=distribute, deterministic=True, out=os.path.join(sys.argv[2], distribute),
                            verbose=1))
    runs[distribute] = str(run)
print("RUNS " + json.dumps(runs))
try:
    train(TrainConfig(data_dir=sys.argv[1], model="plain", image_size=16, batch_size=15, distribute="mirrored",
                      out=os.path.join(sys.argv[2], "odd"), verbose=0))
except Exception as exc:
    print("ODD " + str(exc))
"""


def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    from conftest import make_image_folder, read_csv

    data = make_image_folder(tmp_path / "images", per_class=24)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(tmp_path)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "devices: 2 replicas (MirroredStrategy), 8 images each per step" in result.stdout
    runs = json.loads(result.stdout.split("RUNS ", 1)[1].splitlines()[0])
    assert "ODD batch size 15 does not split evenly between 2 replicas" in result.stdout
    histories = {name: read_csv(tmp_path / name / "history.csv") for name in runs}
    assert len(histories["mirrored"]) == 4
    for two, one in zip(histories["mirrored"], histories["none"]):
        for key in ("loss", "val_loss", "val_accuracy", "val_f1"):
            assert float(two[key]) == pytest.approx(float(one[key]), abs=1e-4), (key, two, one)
    assert float(histories["mirrored"][-1]["loss"]) < float(histories["mirrored"][0]["loss"])
    # a complete run folder: models, metrics (over every validation image), plots, report
    for name in ("best_model.keras", "last_model.keras", "metrics.json", "report.html", "loss.png", "checkpoint.npz"):
        assert (tmp_path / "mirrored" / name).exists(), name
    metrics = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    assert metrics["images"] == 15  # 20% of 72, every one counted once


def test_worker_list_becomes_tf_config():
    config = json.loads(tf_config("10.0.0.1:2222, 10.0.0.2:2222", 1))
    assert config == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ImgclfError, match="two or more"):
        tf_config("10.0.0.1:2222", 0)
    with pytest.raises(ImgclfError, match="worker-index"):
        tf_config("a:1,b:2", 2)
    with pytest.raises(ImgclfError, match="distribute must be one of"):
        TrainConfig.from_dict({"distribute": "ring"})
