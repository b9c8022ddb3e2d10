from pathlib import Path

import numpy as np

from imgclf import TrainConfig
from imgclf.data.labelled import Images
from imgclf.data.pipeline import (
    _cache_path,
    make_dataset,
    make_train_dataset,
    sample_pixels,
    steps_per_call,
    train_steps,
)
from imgclf.data.sources import load_data
from imgclf.models.augment import flip_translate

from conftest import make_image_folder


def config(**kw):
    return TrainConfig(image_size=16, verbose=0, **kw)


def test_streaming_gives_the_same_batches_as_memory(image_folder):
    memory = load_data(config(data_dir=str(image_folder))).labelled
    streamed = load_data(config(data_dir=str(image_folder), memory_limit_mb=0)).labelled
    assert not streamed.in_memory
    (xm, ym), = make_dataset(memory, 64).as_numpy_iterator()
    (xs, ys), = make_dataset(streamed, 64).as_numpy_iterator()
    np.testing.assert_array_equal(xm, xs)
    np.testing.assert_array_equal(ym, ys)
    assert xm.dtype == np.float32 and xm.max() > 1  # raw 0-255: scaling is the model's job


def test_training_batches_depend_only_on_seed_and_epoch(image_folder):
    memory = load_data(config(data_dir=str(image_folder))).labelled
    streamed = load_data(config(data_dir=str(image_folder), memory_limit_mb=0)).labelled
    n, batch = len(memory), 10
    steps = train_steps(n, batch)
    assert steps == n // batch

    def batches(images, first_epoch=0, seed=5):
        dataset = make_train_dataset(images, batch, seed=seed, epochs=3, first_epoch=first_epoch,
                                     augment=flip_translate)
        return list(dataset.as_numpy_iterator())

    whole = batches(memory)
    assert len(whole) == 3 * steps and all(len(y) == batch for _, y in whole)  # full batches only
    for (xm, ym), (xs, ys) in zip(whole, batches(streamed)):  # streamed from disk: the same batches
        np.testing.assert_array_equal(xm, xs)
        np.testing.assert_array_equal(ym, ys)
    for (x1, y1), (x2, y2) in zip(whole[steps:], batches(memory, first_epoch=1)):  # a resume sees the same
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(whole[0][1], whole[steps][1])  # epochs are shuffled differently
    assert not np.array_equal(whole[0][1], batches(memory, seed=6)[0][1])


def test_steps_per_call_divides_the_epoch_of_a_phase_long_enough_to_pay_for_it():
    assert steps_per_call(1250, 25, 50) == 25  # CIFAR-10's 40,000 images at batch 32
    assert steps_per_call(1250, 25, 1) == 25  # an epoch alone is long enough
    assert steps_per_call(1000, 32, 3) == 25
    assert steps_per_call(1249, 25, 50) == 1  # a prime epoch: one step per call
    assert steps_per_call(12, 1, 100) == 1
    for steps in range(1, 200):
        k = steps_per_call(steps, 25, 200)
        assert steps % k == 0 and 1 <= k <= 25
    # phases too short to pay for Keras' second trace of a multi-step call: one step per call
    assert steps_per_call(3, 25, 50) == 1 and steps_per_call(9, 25, 3) == 1 and steps_per_call(10, 8, 39) == 1
    assert steps_per_call(10, 8, 40) == 5  # 400 steps


def test_data_init_sample_spans_every_class(tmp_path):
    labels = np.repeat(np.arange(4), 50)  # stored sorted by class, as folders are
    pixels = np.repeat(np.arange(4, dtype=np.uint8), 50)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    sample = sample_pixels(Images(labels, list("abcd"), pixels, size=(2, 2)), count=40)
    assert len(sample) == 40 and set(np.unique(sample[:, 0, 0, 0])) == {0, 1, 2, 3}
    folder = make_image_folder(tmp_path / "images", per_class=5)
    streamed = load_data(config(data_dir=str(folder), memory_limit_mb=0)).labelled
    memory = load_data(config(data_dir=str(folder))).labelled
    np.testing.assert_array_equal(sample_pixels(streamed, 7, seed=1), sample_pixels(memory, 7, seed=1))


def test_cache_decodes_each_image_once_and_keeps_batches_fixed_by_seed_and_epoch(tmp_path, capsys):
    """--cache: the first dataset decodes the streamed images into the cache; later ones
    read it (the files can even be gone), with epochs still fixed by (seed, epoch) and
    every image at most once per epoch."""
    import shutil

    folder = make_image_folder(tmp_path / "images", per_class=12)
    memory = load_data(config(data_dir=str(folder))).labelled
    streamed = load_data(config(data_dir=str(folder), memory_limit_mb=0)).labelled
    cache = tmp_path / "cache"
    n, batch = len(streamed), 8
    steps = train_steps(n, batch)

    def batches(first_epoch=0, seed=5):
        return list(make_train_dataset(streamed, batch, seed=seed, epochs=3, first_epoch=first_epoch,
                                       cache=str(cache)).as_numpy_iterator())

    # what a run killed while writing the cache leaves (tf.data refuses a cache with a lock file)
    left = Path(_cache_path(str(cache), "train", streamed, 5) + "_0.lockfile")
    left.write_text("killed")
    whole = batches()
    assert "cache: decoded 36 images" in capsys.readouterr().err and not left.exists()
    assert len(whole) == 3 * steps and all(len(y) == batch for _, y in whole)
    pixels = {memory.array[i].astype(np.float32).tobytes(): memory.labels[i] for i in range(n)}
    for e in range(3):
        epoch = whole[e * steps:(e + 1) * steps]
        seen = [image.tobytes() for x, _ in epoch for image in x]
        assert len(set(seen)) == len(seen) == steps * batch  # each image at most once per epoch
        assert all(pixels[image.tobytes()] == label for x, y in epoch for image, label in zip(x, y))
    (x_val, _), = make_dataset(streamed, 64, cache=str(cache)).as_numpy_iterator()  # fills the evaluation cache
    shutil.move(folder, tmp_path / "moved")  # from now on only the cache has the pixels
    for (x1, y1), (x2, y2) in zip(whole[steps:], batches(first_epoch=1)):  # a resume sees the same batches
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert "cache: decoded" not in capsys.readouterr().err  # read back, not decoded again
    assert not np.array_equal(whole[0][1], whole[steps][1])  # epochs are shuffled differently
    (x_again, _), = make_dataset(streamed, 64, cache=str(cache)).as_numpy_iterator()
    np.testing.assert_array_equal(x_again, x_val)
    np.testing.assert_array_equal(x_val, memory.array.astype(np.float32))
