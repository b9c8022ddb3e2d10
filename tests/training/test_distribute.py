"""Training under tf.distribute on CPU: MirroredStrategy over two logical CPU devices (what
Keras' own tests do) against one device at the same global batch; MultiWorkerMirroredStrategy
with two worker processes on 127.0.0.1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgclf import ImgclfError, TrainConfig
from imgclf.training.distribute import local_workers, tf_config

pytestmark = pytest.mark.slow  # trainings in a subprocess (the CPU split must precede TensorFlow's start)

# A recipe with no randomness inside the model and no BatchNorm (whose statistics are per
# replica by design), in float32: two devices must then compute what one device computes.
PLAIN = """
import keras
from imgclf.models import recipes
from imgclf.models.recipes import Recipe, RecipeDefaults

def plain(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(num_classes, activation="softmax")])

def sgd(lr, steps, epochs, backbone_lr=1.0):
    return keras.optimizers.SGD(lr)

def recipe(name):
    return Recipe(build=plain, make_optimizer=sgd)

recipes.RECIPE_DEFAULTS["plain"] = RecipeDefaults(4, 16, 0.05, False, "test recipe", "__main__")  # recipe() above
"""

SCRIPT = """
import json, os, sys
os.environ["IMGCLF_LOGICAL_CPUS"] = "2"
from imgclf.training.distribute import split_cpu
split_cpu()
""" + PLAIN + """
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
    local = json.loads(tf_config(local_workers(2), 1))["cluster"]["worker"]
    assert len(set(local)) == 2 and all(w.startswith("127.0.0.1:") for w in local)
    with pytest.raises(ImgclfError, match="worker-index"):
        tf_config("a:1,b:2", 2)
    with pytest.raises(ImgclfError, match="distribute must be one of"):
        TrainConfig.from_dict({"distribute": "ring"})



def test_multi_worker_without_a_cluster_is_a_clear_error(monkeypatch):
    from imgclf.training.distribute import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ImgclfError, match="needs TF_CONFIG, or --workers"):
        make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}')
    with pytest.raises(ImgclfError, match="TF_CONFIG must be JSON such as"):
        make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(ImgclfError, match="TF_CONFIG must be JSON such as"):
        make_strategy("multi-worker")


# One worker of a multi-worker run: `imgclf train` (the CLI) with the plain recipe, recording
# in $RECORD what the worker read (its training and validation shards) and its final weights;
# with $COPY_AFTER=k, the chief copies its run folder to $COPY_TO once its checkpoint of epoch k
# is written: the folder a SIGKILL of both workers at that moment leaves (the kill itself, of
# real processes, is test_resume's), without a second pair of processes to kill.
WORKER = """
import os, shutil, sys
import numpy as np
""" + PLAIN + """
from imgclf import cli
from imgclf.training import checkpoint, fit as fitting, loop

record, index = os.environ["RECORD"], sys.argv[sys.argv.index("--worker-index") + 1]

def recording(function, name):
    def wrapped(images, *args, **kwargs):
        with open(os.path.join(record, f"{name}{index}.txt"), "w") as handle:
            handle.write("\\n".join(images.names()))
        return function(images, *args, **kwargs)
    return wrapped

fitting.make_train_dataset = recording(fitting.make_train_dataset, "train")
fitting.make_dataset = recording(fitting.make_dataset, "val")
fit = loop.fit

def fit_and_record(*args, **kwargs):
    fitted = fit(*args, **kwargs)
    np.savez(os.path.join(record, f"weights{index}.npz"), *fitted.best.model.get_weights())
    return fitted

loop.fit = fit_and_record
write = checkpoint.TrainingCheckpoint.on_epoch_end

def write_and_maybe_copy(self, epoch, logs=None):
    write(self, epoch, logs)
    if index == "0" and os.environ.get("COPY_AFTER") == str(epoch + 1):
        shutil.copytree("run", os.environ["COPY_TO"])

checkpoint.TrainingCheckpoint.on_epoch_end = write_and_maybe_copy
sys.exit(cli.main(sys.argv[1:]))
"""


def _two_workers(root: Path, name: str, args: list[str], env: dict | None = None) -> list[Path]:
    """Run worker 0 and worker 1 of a 2-worker run, each in its own empty working folder and
    temporary folder under root/name; return [folder 0, folder 1]."""
    workers = local_workers(2)
    folders, processes = [], []
    for index in (0, 1):
        folder = root / name / f"worker{index}"
        (folder / "cwd").mkdir(parents=True)
        (folder / "tmp").mkdir()
        (folder / "record").mkdir()
        command = [sys.executable, "-c", WORKER, "train", *args, "--workers", workers, "--worker-index", str(index)]
        processes.append(subprocess.Popen(
            command, cwd=folder / "cwd", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(folder / "tmp"),
                 "RECORD": str(folder / "record"), "CUDA_VISIBLE_DEVICES": "", **(env or {})}))
        folders.append(folder)
    for folder, process in zip(folders, processes):
        output, _ = process.communicate(timeout=600)
        (folder / "output.txt").write_text(output)
        (folder / "returncode").write_text(str(process.returncode))
    return folders


def _returncodes(folders: list[Path]) -> list[int]:
    return [int((folder / "returncode").read_text()) for folder in folders]


def test_two_worker_processes_train_one_model_and_resume_from_its_epoch_2_folder(tmp_path):
    """Two processes on 127.0.0.1 with --workers: one model (identical weights on both),
    written by the chief alone, each worker reading a disjoint shard; then the run folder as
    it was after epoch 2's checkpoint (what killing both workers then leaves), resumed by two
    new workers: the history of the uninterrupted run."""
    from conftest import make_image_folder, read_csv

    data = make_image_folder(tmp_path / "images", per_class=24)
    args = ["--data-dir", str(data), "--model", "plain", "--image-size", "16", "--batch-size", "16",
            "--precision", "float32", "--deterministic", "--calibrate", "none", "--out", "run"]
    run = tmp_path / "after2" / "run"
    whole = _two_workers(tmp_path, "whole", args, env={"COPY_AFTER": "2", "COPY_TO": str(run)})
    outputs = [(folder / "output.txt").read_text() for folder in whole]
    assert _returncodes(whole) == [0, 0], outputs
    assert "devices: 2 replicas (MultiWorkerMirroredStrategy, 2 workers reading a shard each), 8 images each" \
        in outputs[0]
    assert "worker 1 of 2: training with the chief" in outputs[1]
    chief = whole[0] / "cwd" / "run"
    for name in ("best_model.keras", "last_model.keras", "metrics.json", "report.html", "checkpoint.npz",
                 "history.csv", "split.csv"):
        assert (chief / name).exists(), name
    assert json.loads((chief / "metrics.json").read_text())["images"] == 15  # every validation image
    history = read_csv(chief / "history.csv")
    assert len(history) == 4 and float(history[-1]["loss"]) < float(history[0]["loss"])
    # the other worker wrote nothing: not in its working folder, nothing left in its temporary one
    assert list((whole[1] / "cwd").iterdir()) == [] and list((whole[1] / "tmp").iterdir()) == []
    # one model: the same weights on both workers, bit for bit (both apply the same all-reduced gradients)
    weights = [np.load(folder / "record" / f"weights{i}.npz") for i, folder in enumerate(whole)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    for key in weights[0].files:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    # disjoint shards that together are the split
    split = read_csv(chief / "split.csv")
    for kind, subset in (("train", "train"), ("val", "val")):
        shards = [set((folder / "record" / f"{kind}{i}.txt").read_text().splitlines())
                  for i, folder in enumerate(whole)]
        assert shards[0] and shards[1] and not shards[0] & shards[1], kind
        assert shards[0] | shards[1] == {row["item"] for row in split if row["subset"] == subset}, kind

    assert len(read_csv(run / "history.csv")) == 2 and not (run / "metrics.json").exists()
    resumed = _two_workers(tmp_path, "resumed", ["--resume", str(run)])
    assert _returncodes(resumed) == [0, 0], [(folder / "output.txt").read_text() for folder in resumed]
    assert json.loads((run / "metrics.json").read_text())["resumed_after_epoch"] == 2
    again = read_csv(run / "history.csv")
    assert [row["epoch"] for row in again] == ["1", "2", "3", "4"]
    for one, other in zip(again, history):
        for key in ("loss", "val_loss", "val_accuracy"):
            assert float(one[key]) == pytest.approx(float(other[key]), abs=1e-6), (key, one, other)
    assert list((resumed[1] / "cwd").iterdir()) == [] and list((resumed[1] / "tmp").iterdir()) == []
