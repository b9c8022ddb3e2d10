"""Grad-CAM (`inference/explain.py`, `imgclf explain`): heatmaps that point at what tells the
classes apart, on every recipe, and one-line errors for models it cannot explain."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from imgclf import ModelFileError
from imgclf.inference.explain import Explainer, explain_layer, overlay
from imgclf.inference.modelio import LoadedModel, load_model, save_model
from imgclf.models.recipes import BACKBONES
from imgclf.models.registry import create_model
from imgclf.run.folder import split_images

from conftest import SQUARE_COLORS, read_csv, run_main

SQUARE = 8  # make_square_folder's square side


def peak_inside_square(heatmaps: np.ndarray, boxes: list[tuple[int, int]]) -> float:
    """Share of the heatmaps whose highest point lies inside the image's square."""
    hits = []
    for heatmap, (top, left) in zip(heatmaps, boxes):
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        hits.append(top <= y < top + SQUARE and left <= x < left + SQUARE)
    return float(np.mean(hits))


@pytest.mark.parametrize("recipe", ["seed", "fast-tiny"])
def test_the_heatmap_peaks_inside_the_square_that_tells_the_classes_apart(square_runs, recipe):
    boxes, runs = square_runs
    loaded = load_model(runs[recipe] / "best_model.keras")
    val = split_images(runs[recipe], loaded, "val")
    heatmaps, probs = Explainer(loaded).heatmaps(val.array)
    assert heatmaps.shape == (len(val), 32, 32) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.mean(probs.argmax(1) == val.labels) >= 0.9  # the model learnt the squares
    where = [boxes[path] for path in val.paths]
    assert peak_inside_square(heatmaps, where) >= 0.8
    # the measure can fail: heatmaps of noise, or of a fixed spot, miss most squares
    noise = np.random.default_rng(0).random(heatmaps.shape)
    assert peak_inside_square(noise, where) < 0.5
    assert peak_inside_square(np.roll(heatmaps, 16, axis=(1, 2)), where) < 0.5


def test_explain_command_writes_overlays_predictions_and_raw_heatmaps(square_runs, tmp_path):
    boxes, runs = square_runs
    model = runs["seed"] / "best_model.keras"
    files = [path for path in boxes if "/red/" in path][:2] + [path for path in boxes if "/blue/" in path][:1]
    out = tmp_path / "why"
    result = run_main("explain", model, *files, "--out", out)
    assert result.returncode == 0, result.stderr
    rows = read_csv(out / "explanations.csv")
    assert [row["file"] for row in rows] == files
    assert [row["class"] for row in rows] == ["red", "red", "blue"]
    assert all(row["explained_class"] == row["class"] for row in rows)
    heatmaps = np.load(out / "heatmaps.npz")
    assert sorted(heatmaps.files) == sorted(files)
    for name in files:
        assert heatmaps[name].shape == (32, 32) and 0 <= heatmaps[name].min() <= heatmaps[name].max() <= 1
    with Image.open(out / rows[0]["overlay"]) as picture:
        assert picture.size == (224, 224) and picture.mode == "RGB"
    assert "wrote 3 overlays" in result.stdout

    again = run_main("explain", model, files[0], "--class", "green", "--out", tmp_path / "green")
    assert again.returncode == 0, again.stderr
    (row,) = read_csv(tmp_path / "green" / "explanations.csv")
    assert (row["class"], row["explained_class"]) == ("red", "green")
    bad = run_main("explain", model, files[0], "--class", "purple", "--out", tmp_path / "purple")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "'purple' is not one of" in bad.stderr


def test_every_recipe_names_the_layer_grad_cam_explains():
    """The recipe's choice, not a guess: seed's last conv, the fast family's first block end, the
    backbone's output; an --init model (a new head) keeps its source's choice. Each runs."""
    from imgclf.models.backbones import backbone_output
    from imgclf.models.registry import get_recipe
    from imgclf.training.transfer import transfer_model

    # every backbone recipe names the same layer, its backbone's output: one of them is built
    assert all(get_recipe(name).explain_layer is backbone_output for name in BACKBONES)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    for name in ("seed", "fast", "fast-small", "fast-tiny", "fast-deep", "mobilenetv3small"):
        keras.utils.set_random_seed(1)
        extra = {"weights": "none"} if name in BACKBONES else {"train_pixels": pixels}
        model = create_model(name, (32, 32, 3), 3, **extra)
        loaded = LoadedModel(model, ["a", "b", "c"], (32, 32), {"recipe": name})
        layer = Explainer(loaded).layer
        expected = {"seed": keras.layers.Conv2D}.get(name, keras.Model if name in BACKBONES else keras.layers.Layer)
        assert isinstance(layer, expected) and len(layer.output.shape) == 4, name
        if name.startswith("fast"):  # the first block's end, its residual added where it has one
            assert layer.output.shape[1:3] == (15, 15), name
            assert name != "fast-deep" or type(model.layers[model.layers.index(layer) - 1]).__name__ == "Add"
        if name in ("seed", "fast-tiny", "fast-deep", "mobilenetv3small"):  # and the computation runs
            heatmaps, probs = Explainer(loaded).heatmaps(pixels)
            assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all(), name
            if name == "fast-tiny":
                moved = LoadedModel(transfer_model(model, (32, 32, 3), 5), list("abcde"), (32, 32), {"recipe": name})
                assert explain_layer(moved) == explain_layer(loaded)
                assert Explainer(moved).heatmaps(pixels)[1].shape == (2, 5)


def test_a_model_without_convolutions_is_a_one_line_error(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    save_model(keras.Model(inputs, outputs), tmp_path / "dense.keras", ["a", "b"])
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = run_main("explain", tmp_path / "dense.keras", tmp_path / "x.png", "--out", tmp_path / "out")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no convolution layer" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any file is read or written
    with pytest.raises(ModelFileError, match="needs the .keras model"):
        Explainer(LoadedModel(None, ["a", "b"], (8, 8), {}, format="onnx"))


def test_overlay_is_enlarged_and_coloured_where_the_heatmap_is_high():
    pixels = np.full((16, 16, 3), 128, np.uint8)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[:4, :4] = 1
    image = np.asarray(overlay(pixels, heatmap))
    assert image.shape == (224, 224, 3)
    hot, cold = image[10, 10], image[200, 200]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where high, blue where low


def test_square_colours_are_the_classes():
    assert list(SQUARE_COLORS) == ["red", "green", "blue", "yellow"]


def test_a_model_that_is_not_a_chain_is_explained_through_its_graph():
    """fast-deep's residual blocks are not a chain of layers: Grad-CAM runs such a model as a
    Keras model with the chosen layer's output among its outputs. On a chain (fast-tiny) both
    ways give the same heatmaps; a model with two inputs is refused in one line."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    keras.utils.set_random_seed(1)
    model = create_model("fast-tiny", (32, 32, 3), 3, train_pixels=pixels)
    loaded = LoadedModel(model, ["a", "b", "c"], (32, 32), {"recipe": "fast-tiny"})
    chain, graph = Explainer(loaded, compile=False), Explainer(loaded, compile=False)
    graph._graph = graph._graph_model()
    (heat_chain, probs_chain), (heat_graph, probs_graph) = chain.heatmaps(pixels), graph.heatmaps(pixels)
    assert np.allclose(probs_chain, probs_graph, atol=1e-5)
    assert np.allclose(heat_chain, heat_graph, atol=1e-3) and heat_chain.max() > 0.99

    first, second = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    two = keras.Model([first, second], keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Add()([first, second])))))
    with pytest.raises(ModelFileError, match="2 inputs and 1 outputs"):
        Explainer(LoadedModel(two, ["a", "b", "c"], (32, 32), {}))
