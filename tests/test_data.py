import time

import numpy as np
import pytest

from conftest import make_image_folder
from imgclf import DataError, TrainConfig
from imgclf import data as data_mod
from imgclf.data import check_classes, load_data, make_dataset, split_indices


def config(**kw):
    return TrainConfig(image_size=16, verbose=0, **kw)


def test_folder_classes_and_pixels(image_folder):
    loaded = load_data(config(data_dir=str(image_folder)))
    images = loaded.labelled
    assert images.class_names == ["blue", "green", "red"]
    assert len(images) == 48 and images.in_memory
    assert images.array.shape == (48, 16, 16, 3) and images.array.dtype == np.uint8
    red = images.array[images.labels == 2]
    assert red[..., 0].mean() > red[..., 2].mean() + 100  # labels match their pixels
    assert loaded.test is None


def test_train_and_test_subfolders_are_splits(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=6)
    make_image_folder(tmp_path / "d" / "test", per_class=3, seed=1)
    loaded = load_data(config(data_dir=str(tmp_path / "d")))
    assert len(loaded.labelled) == 18 and len(loaded.test) == 9
    assert loaded.test.class_names == loaded.labelled.class_names


def test_csv_with_string_labels_uses_label_encoder(tmp_path, image_folder):
    rows = ["path,label"]
    for cls in ("red", "blue"):
        rows += [f"images/{cls}/{p.name},{cls} things" for p in sorted((image_folder / cls).iterdir())]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    images = load_data(config(labels=str(tmp_path / "labels.csv"))).labelled
    assert images.class_names == ["blue things", "red things"]
    assert np.bincount(images.labels).tolist() == [16, 16]


def test_bad_files_are_skipped_and_named(image_folder, capsys):
    (image_folder / "red" / "notes.jpg").write_text("not an image")
    (image_folder / "blue" / "empty.png").write_bytes(b"")
    images = load_data(config(data_dir=str(image_folder))).labelled
    assert len(images) == 48
    assert sorted(p.rsplit("/", 1)[1] for p, _ in images.skipped) == ["empty.png", "notes.jpg"]
    err = capsys.readouterr().err
    assert err.count("warning: skipped 2") == 1 and "notes.jpg" in err and "empty.png" in err


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
    from imgclf.data import make_train_dataset, train_steps
    from imgclf.fast import flip_translate

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


def test_steps_per_call_divides_the_epoch():
    from imgclf.data import steps_per_call

    assert steps_per_call(1250, 25) == 25  # CIFAR-10's 40,000 images at batch 32
    assert steps_per_call(1000, 32) == 25
    assert steps_per_call(1249, 25) == 1  # a prime epoch: one step per call
    assert steps_per_call(3, 25) == 3 and steps_per_call(1, 25) == 1 and steps_per_call(12, 1) == 1
    for steps in range(1, 200):
        k = steps_per_call(steps, 25)
        assert steps % k == 0 and 1 <= k <= 25


def test_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(4), 25)
    train, val = split_indices(labels, 0.2, seed=3)
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100
    again = split_indices(labels, 0.2, seed=3)
    assert train.tolist() == again[0].tolist()


def test_limit_takes_a_stratified_sample(image_folder):
    images = load_data(config(data_dir=str(image_folder), limit=12)).labelled
    assert np.bincount(images.labels).tolist() == [4, 4, 4]


@pytest.mark.parametrize("setup,message", [
    (lambda root: None, "not found"),
    (lambda root: root.mkdir(), "no images"),
    (lambda root: make_image_folder(root, classes={"only": (1, 2, 3)}), "two classes"),
    (lambda root: (make_image_folder(root, per_class=5), [p.unlink() for p in list((root / "red").iterdir())[1:]]),
     "too few images"),
])
def test_unusable_datasets_are_clear_errors(tmp_path, setup, message):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(DataError, match=message):
        check_classes(load_data(config(data_dir=str(root))).labelled)


def test_cifar10_fails_fast_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache: a download would be needed
    monkeypatch.setattr(data_mod, "CIFAR10_HOST", ("cifar10.invalid", 443))
    start = time.perf_counter()
    with pytest.raises(DataError, match="cannot download CIFAR-10.*--data-dir"):
        load_data(config())
    assert time.perf_counter() - start < 15


def test_cifar10_uses_the_real_keras_loader(monkeypatch, tmp_path):
    import keras

    x = np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    y = np.repeat(np.arange(10), 2).reshape(-1, 1)
    calls = []
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: calls.append(1) or ((x, y), (x[:10], y[:10])))
    monkeypatch.setattr(data_mod, "_require_network", lambda *a: None)
    loaded = load_data(TrainConfig(verbose=0))
    assert calls == [1] and loaded.labelled.class_names[0] == "airplane"
    assert loaded.labelled.array.shape == (20, 32, 32, 3) and len(loaded.test) == 10
