import json

import numpy as np
import pytest

from imgclf import TrainConfig, train
from imgclf.models.fast import fast_cnn, whitening_weights
from imgclf.models.layers import MatmulGradConv2D
from imgclf.models.recipes import resolve
from imgclf.training.precision import compute_precision

from conftest import CIFAR10_TRAIN, read_csv


def test_whitening_decorrelates_patches():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (200, 8, 8, 1)).astype(np.float32)
    pixels = np.clip(np.concatenate([base, base * 0.5 + 60, 255 - base], axis=-1), 0, 255).astype(np.uint8)
    kernel, bias = whitening_weights(pixels, eps=1e-6)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])  # both signs: a negation, no arithmetic
    # The check runs in float64 on the float32 weights, so no BLAS kernel's rounding enters it;
    # what rounding remains (the bias, computed in float32 from 12-term sums) is bounded by
    # float32's epsilon times the magnitudes summed, |x| . |w| + |b|, which reach ~5e3 here.
    x = pixels.astype(np.float64) / 255
    windows = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    windows = windows.reshape(-1, 12)
    weights = kernel.reshape(12, 24).astype(np.float64)
    out = windows @ weights + bias
    scale = np.abs(windows) @ np.abs(weights) + np.abs(bias)
    rounding = 2 * 12 * np.finfo(np.float32).eps * scale
    assert (np.abs(out[:, 12:] + out[:, :12]) <= rounding[:, 12:] + rounding[:, :12]).all()
    half = out[:, :12]
    top = np.cov(half[:, :4], rowvar=False)  # the strong components come out unit-variance and uncorrelated
    np.testing.assert_allclose(top, np.eye(4), atol=0.05)
    assert (np.abs(half.mean(axis=0)) <= 1e-3 + rounding[:, :12].max(axis=0)).all()  # centred


def test_fast_model_shapes_and_layers():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    model = fast_cnn((32, 32, 3), 10, pixels)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 1 and kinds.count("FusedBatchNorm") == 6 and kinds.count("QuickGELU") == 7
    # the whitening, then the blocks' convs: at 31x31 and 15x15 TensorFlow's filter gradient, at
    # 7x7 and 3x3 (the last three) the matmuls'
    convs = [layer for layer in model.layers if isinstance(layer, MatmulGradConv2D)]
    assert [conv.matmul_filter_gradient for conv in convs] == [False, False, False, True, True, True]
    trainable = {w.path for w in model.trainable_weights}
    assert "whiten/bias" in trainable and "whiten/kernel" not in trainable  # the whitening itself stays fixed
    probs = model.predict(pixels[:4].astype("float32"), verbose=0)
    assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert model.output.dtype == "float32"


def test_fast_model_under_bfloat16_keeps_float32_outputs():
    with compute_precision("bfloat16"):
        model = fast_cnn((32, 32, 3), 10)
    assert model.layers[-2].compute_dtype == "bfloat16"
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).dtype == np.float32


def test_whitening_bias_trains_then_freezes():
    import keras

    from imgclf.models.fast import WHITEN_BIAS_EPOCHS, make_optimizer

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    model = fast_cnn((16, 16, 3), 3, pixels, widths=(8, 8, 8))
    # one step per "epoch": the bias trains for WHITEN_BIAS_EPOCHS steps
    model.compile(optimizer=make_optimizer(0.1, steps_per_epoch=1, epochs=8), loss="sparse_categorical_crossentropy")
    whiten = model.get_layer("whiten")
    kernel = whiten.kernel.numpy().copy()
    seen = [whiten.bias.numpy().copy()]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(whiten.bias.numpy().copy()))
    model.fit(pixels.astype("float32"), rng.integers(0, 3, 64), batch_size=8, epochs=1, verbose=0,
              callbacks=[record], shuffle=False)
    for step in range(WHITEN_BIAS_EPOCHS):
        assert not np.allclose(seen[step], seen[step + 1])  # the first steps move it
    np.testing.assert_array_equal(seen[WHITEN_BIAS_EPOCHS], seen[-1])  # then frozen
    np.testing.assert_array_equal(kernel, whiten.kernel.numpy())


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_TRAIN.is_dir(), reason="needs ../shared/datasets/cifar10/train")
def test_fast_recipe_learns_a_cifar10_subset_quickly(tmp_path):
    """1,000 real CIFAR-10 images, 3 epochs: far above chance (10%); 46.5-56% over seeds 42, 0, 1, 2
    (50-56% at 4 epochs, a third more time)."""
    run = train(TrainConfig(model="fast", data_dir=str(CIFAR10_TRAIN), limit=1000, epochs=3, batch_size=128,
                            calibrate="none", out=str(tmp_path / "run"), verbose=0))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 200 and metrics["accuracy"] >= 0.40, metrics


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A new user's folder: 300 photos of 3 classes at 160x120 (CIFAR-10 images upscaled)."""
    from PIL import Image

    if not CIFAR10_TRAIN.is_dir():
        pytest.skip("needs ../shared/datasets/cifar10/train")
    root = tmp_path_factory.mktemp("photos")
    for name in ("airplane", "cat", "ship"):
        folder = root / name
        folder.mkdir(parents=True)
        for i, path in enumerate(sorted((CIFAR10_TRAIN / name).iterdir())[:100]):
            Image.open(path).convert("RGB").resize((160, 120), Image.BICUBIC).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_auto_and_fast_train_stably_on_a_few_hundred_photos(photos, tmp_path, capsys, monkeypatch):
    """Trained at 32 px (the photos resized down). With CIFAR's batch of 1,000 (more than the 240
    training images) the fast recipe's loss rises (at 64 px: 1.10 -> 1.74, 1.13 -> 2.19 at seeds
    42 and 0; 1.09 -> 5.87 with 360 images at 96 px); with the fitted batch it falls and the
    accuracy reaches 73-82% at 32 px (seeds 42, 0, 1, 2; 72-77% at 64 px, 2.5x the time).
    `--model auto`, on a machine without ImageNet weights (an empty Keras cache), says it picks
    `fast` and why; its run is exactly the `--model fast` run (same resolved configuration), so
    one training checks both."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    run = train(TrainConfig(model="auto", data_dir=str(photos), image_size=32, epochs=3,
                            out=str(tmp_path / "run"), verbose=0))
    err = capsys.readouterr().err
    assert "--model auto: fast, because no ImageNet weights in" in err
    assert "was tuned for other data than this run's" in err
    config = json.loads((run / "config.json").read_text())
    fast = resolve(TrainConfig(model="fast", data_dir=str(photos), image_size=32, epochs=3,
                               out=str(tmp_path / "run"), verbose=0), 240).replace(precision=config["precision"])
    assert config == fast.to_dict()
    assert config["batch_size"] == 32  # fitted: 20 steps an epoch would need batches of 12
    loss = [float(row["loss"]) for row in read_csv(run / "history.csv")]
    assert loss[-1] < loss[0], loss
    assert json.loads((run / "metrics.json").read_text())["accuracy"] > 0.5, loss  # 3 classes: chance is 1/3


def test_precise_batchnorm_refreshes_running_statistics():
    from imgclf.models.fast import PreciseBatchNorm

    model = fast_cnn((16, 16, 3), 3)
    bn = next(layer for layer in model.layers if type(layer).__name__ == "FusedBatchNorm")
    before = np.array(bn.moving_mean.numpy())
    callback = PreciseBatchNorm(np.full((64, 16, 16, 3), 200, np.uint8), steps_per_epoch=2)
    callback.set_model(model)
    callback.on_train_batch_end(0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)  # not the epoch's last step
    callback.on_train_batch_end(1)
    assert not np.allclose(bn.moving_mean.numpy(), before)


@pytest.mark.slow  # a new process
def test_saved_fast_model_loads_in_a_fresh_process(tmp_path):
    """The custom layers are registered by imgclf's loader itself, not by having trained first."""
    import subprocess
    import sys

    from imgclf.inference.modelio import save_model

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    model = fast_cnn((16, 16, 3), 3, pixels, widths=(8, 8, 8))
    save_model(model, tmp_path / "m.keras", ["a", "b", "c"], model_name="fast")
    expected = model.predict(pixels[:2].astype("float32"), verbose=0)
    np.save(tmp_path / "x.npy", pixels[:2])
    code = ("import numpy as np, sys; from imgclf.inference.modelio import load_model; "
            "m = load_model(sys.argv[1]); "
            "np.save(sys.argv[2], m.model.predict(np.load(sys.argv[3]).astype('float32'), verbose=0))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras"), str(tmp_path / "y.npy"),
                             str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)
