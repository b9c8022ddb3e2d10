"""Exports: every format of every tested recipe matches Keras in its own runtime; a tampered
artifact fails the check and is deleted; metadata travels inside and beside each artifact."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from imgclf.errors import DataError, ModelFileError
from imgclf.export.graph import inference_copy
from imgclf.export.verify import (
    FLOAT_TOLERANCE,
    ExportError,
    check_images,
    int8_problems,
    keras_probabilities,
    verify_artifact,
)
from imgclf.export.writers import FORMATS, WRITERS, add_litert_metadata, default_path, export_model
from imgclf.inference.modelio import load_model
from imgclf.inference.predict import predict_files
from imgclf.inference.runtimes import LABELS_FILE, detect_format, open_model, read_litert_metadata

RECIPES = ("seed", "fast-tiny")


@pytest.fixture(scope="module")
def exported(export_runs) -> dict[tuple[str, str], object]:
    """(recipe, format) -> ExportReport, every format of every recipe exported once."""
    return {(recipe, fmt): export_model(run / "best_model.keras", fmt, verbose=False)
            for recipe, run in export_runs.items() for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_format_matches_keras(exported, export_runs, recipe, fmt):
    report = exported[recipe, fmt]
    path = Path(report.path)
    assert path == default_path(export_runs[recipe] / "best_model.keras", fmt) and path.exists()
    # the whole validation split, then training images (same pixels in both runtimes)
    assert report.images == 210 and report.labelled_images == 210
    assert report.check_source == "the run's validation split (42), the run's training split (168)"
    if fmt == "litert-int8":
        assert not int8_problems(report) and report.confident_images > 0
        assert report.export_accuracy is not None
    else:
        assert report.agreement == 1.0 and report.max_abs_diff <= FLOAT_TOLERANCE
    assert report.bytes > 1000
    # metadata inside the artifact, class names and size as in the .keras file
    artifact = open_model(path)
    keras_model = load_model(export_runs[recipe] / "best_model.keras")
    assert artifact.format == detect_format(path) == fmt.replace("-int8", "")
    assert artifact.class_names == keras_model.class_names and artifact.image_size == keras_model.image_size
    assert artifact.metadata["recipe"] == recipe and artifact.metadata["format"] == fmt
    # training calibrated the model: the export computes with the same temperature, and says it
    assert keras_model.temperature != 1.0 and artifact.temperature == keras_model.temperature
    beside = json.loads(((path if path.is_dir() else path.parent) / LABELS_FILE).read_text())
    assert beside["class_names"] == keras_model.class_names and beside["image_size"] == [16, 16]


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_takes_exports(exported, export_runs, fmt):
    run = export_runs["fast-tiny"]
    data = Path(json.loads((run / "config.json").read_text())["data_dir"])
    files = [str(p) for p in sorted(data.glob("*/1*.png"))[:12]]
    want, _ = predict_files(open_model(run / "best_model.keras"), files, top_k=3)
    got, _ = predict_files(open_model(exported["fast-tiny", fmt].path), files, top_k=3)
    assert [p.name for p in got] == files
    # the .keras file runs in mixed precision on CPUs with bfloat16, the exports in float32
    tolerance = 0.05 if fmt == "litert-int8" else 0.01
    for a, b in zip(want, got):
        assert a.label == b.label
        assert abs(a.confidence - b.confidence) < tolerance


def _tampered_writer(fmt):
    writer = WRITERS[fmt]

    def write(graph, path, metadata, calibration):
        dense = [layer for layer in graph.layers if isinstance(layer, keras.layers.Dense)][-1]
        dense.set_weights([-w for w in dense.get_weights()])  # the classifier's scores reversed
        writer(graph, path, metadata, calibration)
    return write


@pytest.mark.parametrize("fmt", FORMATS)
def test_tampered_artifact_fails_and_is_deleted(exported, export_runs, fmt, monkeypatch, tmp_path):
    """On fast-tiny, the harder case of the two recipes (a whitening layer in float to keep in
    int8, BatchNorm folded): the check does not depend on the recipe."""
    recipe = "fast-tiny"
    model_path = export_runs[recipe] / "best_model.keras"
    good = Path(exported[recipe, fmt].path)
    before = sorted(p.name for p in good.parent.iterdir())
    monkeypatch.setitem(WRITERS, fmt, _tampered_writer(fmt))
    with pytest.raises(ExportError, match="it was deleted"):
        export_model(model_path, fmt, verbose=False)
    # the earlier good export is untouched and no partial file is left
    assert sorted(p.name for p in good.parent.iterdir()) == before
    assert open_model(good).class_names


@pytest.mark.slow  # services in new processes
def test_bench_serve_small_reuses_the_exports_of_this_model(exported, export_runs, tmp_path):
    """The benchmark's machinery end to end, with few calls (its figures are not asserted). The
    exports already made from this very model file are used as they are; the missing one
    (ONNX) is made."""
    from imgclf.bench.serve import run_bench_serve

    run = tmp_path / "run"
    shutil.copytree(export_runs["fast-tiny"], run, ignore=shutil.ignore_patterns("*.onnx"))
    kept = {fmt: default_path(run / "best_model.keras", fmt) for fmt in FORMATS if fmt != "onnx"}
    written = {fmt: path.stat().st_mtime_ns for fmt, path in kept.items()}
    report = run_bench_serve([run / "best_model.keras"], tmp_path / "out", calls=30, http_requests=16, mixed=40)
    assert {fmt: path.stat().st_mtime_ns for fmt, path in kept.items()} == written  # not exported again
    assert default_path(run / "best_model.keras", "onnx").exists()
    entry = report["models"][str(run / "best_model.keras")]
    assert set(entry["in_process"]) == {"keras predict", "compiled function", "savedmodel", "onnxruntime", "litert",
                                        "litert-int8"}
    assert all(f["p50_ms"] > 0 and f["p99_ms"] >= f["p50_ms"] for f in entry["in_process"].values())
    assert set(entry["http"]) == {"keras", "onnx"} and entry["http"]["keras"]["8_clients"]["requests_per_s"] > 0
    mixed = entry["mixed_requests"]
    assert mixed["server_errors"] == 0 and mixed["unexpected_count"] == 0 and mixed["still_answering"]
    assert mixed["statuses"][200] == 20 and (tmp_path / "out" / "bench_serve.json").exists()
    assert set(entry["sizes_bytes"]) == {"keras", "savedmodel", "onnx", "litert", "litert-int8"}


def test_verify_catches_altered_weights_in_a_written_file(export_runs, tmp_path):
    """Tamper with the bytes of a checked ONNX file: the check fails."""
    import onnx
    from onnx import numpy_helper

    model_path = export_runs["seed"] / "best_model.keras"
    loaded = load_model(model_path)
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(default_path(model_path, "onnx"), onnx_file)
    proto = onnx.load(str(onnx_file))
    classifier = [t for t in proto.graph.initializer if list(t.dims) == [128, 3]]  # seed: Dense(128) -> 3 classes
    assert len(classifier) == 1
    weights = numpy_helper.to_array(classifier[0])
    classifier[0].CopyFrom(numpy_helper.from_array(np.roll(weights, 1, axis=1), classifier[0].name))
    onnx.save(proto, str(onnx_file))
    check = check_images(model_path, loaded, None)
    with pytest.raises(ExportError, match="disagrees with Keras"):
        verify_artifact(onnx_file, "onnx", keras_probabilities(inference_copy(loaded.model), check), check)


def test_inference_copy_is_float32_without_augmentation(export_runs):
    loaded = load_model(export_runs["seed"] / "best_model.keras")
    copy = inference_copy(loaded.model)
    assert not [layer for layer in copy.layers if type(layer).__name__.startswith("Random")]
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.float32)
    original = loaded.model(pixels, training=False).numpy()
    np.testing.assert_allclose(copy(pixels).numpy(), original, atol=0.02)  # bfloat16 vs float32 at most


def test_litert_metadata_round_trip(exported):
    path = Path(exported["seed", "litert"].path)
    content = add_litert_metadata(path.read_bytes(), {"class_names": ["a", "b"], "note": "ü"})
    assert read_litert_metadata(content) == {"class_names": ["a", "b"], "note": "ü"}
    assert read_litert_metadata(path.read_bytes())["recipe"] == "seed"


def test_check_images_outside_a_run_folder(export_runs, tmp_path):
    """A model away from its run folder needs --check-data; 20 images there are topped up to
    200 with mirrored and shifted copies (labels kept)."""
    model_path = export_runs["seed"] / "best_model.keras"
    loose = tmp_path / "model.keras"
    shutil.copy(model_path, loose)
    with pytest.raises(DataError, match="--check-data"):
        export_model(loose, "onnx", verbose=False)
    assert not (tmp_path / "model.onnx").exists()
    few = tmp_path / "few" / "red"
    few.mkdir(parents=True)
    data = Path(json.loads((export_runs["seed"] / "config.json").read_text())["data_dir"])
    for image in sorted((data / "red").iterdir())[:20]:
        shutil.copy(image, few)
    report = export_model(loose, "onnx", check_data=tmp_path / "few", verbose=False)
    assert report.images == 200 and report.labelled_images == 200 and report.agreement == 1.0
    assert report.check_source == f"{tmp_path / 'few'}, 180 mirrored and shifted copies of them"


def test_check_data_folder_gives_accuracy(export_runs, tmp_path):
    model_path = export_runs["seed"] / "best_model.keras"
    data = Path(json.loads((export_runs["seed"] / "config.json").read_text())["data_dir"])
    report = export_model(model_path, "onnx", tmp_path / "m.onnx", check_data=data, verbose=False)
    # --check-data's images first, then the run's, up to 1,000
    assert report.check_source == f"{data} (210), the run's validation split (42), the run's training split (168)"
    assert report.images == 420
    assert report.keras_accuracy == report.export_accuracy and report.keras_accuracy > 0.9
    assert (tmp_path / LABELS_FILE).exists()


@pytest.mark.parametrize("name, content, message", [
    ("bad.onnx", b"not a model", "cannot load onnx model"),
    ("bad.tflite", b"not a model", "cannot load litert model"),
    ("empty.tflite", b"", "cannot load litert model"),
])
def test_open_model_rejects_damaged_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        open_model(tmp_path / name)


def test_open_model_needs_class_names(exported, tmp_path):
    source = Path(exported["seed", "onnx"].path)
    import onnx

    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="no class names"):
        open_model(tmp_path / "bare.onnx")
    (tmp_path / LABELS_FILE).write_text(json.dumps({"class_names": ["blue", "green", "red"], "image_size": [16, 16]}))
    assert open_model(tmp_path / "bare.onnx").class_names == ["blue", "green", "red"]
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelFileError, match="without saved_model.pb"):
        open_model(tmp_path / "folder")


def test_export_rejects_bad_paths(export_runs, tmp_path):
    model_path = export_runs["seed"] / "best_model.keras"
    with pytest.raises(ExportError, match="ending in .onnx"):
        export_model(model_path, "onnx", tmp_path / "m.tflite", verbose=False)
    with pytest.raises(ExportError, match="folder not found"):
        export_model(model_path, "litert", tmp_path / "missing" / "m.tflite", verbose=False)
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(model_path, "coreml", verbose=False)


@pytest.mark.slow
def test_export_command_then_predict_with_the_export(export_runs, tmp_path):
    """`imgclf export` in a new process (what it prints there, native output included), then
    the command's other uses through its entry point."""
    from conftest import run_cli, run_main

    run = tmp_path / "run"
    shutil.copytree(export_runs["seed"], run, ignore=shutil.ignore_patterns("*.onnx", "*.tflite", "*_savedmodel"))
    done = run_cli("export", run / "best_model.keras", "--format", "onnx", "litert")
    assert done.returncode == 0, done.stderr
    assert "same class as Keras on 100.00%" in done.stdout and done.stdout.count("wrote ") == 2
    assert done.stderr == ""  # converters' and runtimes' native chatter filtered out
    image = next(Path(json.loads((run / "config.json").read_text())["data_dir"]).glob("red/*.png"))
    for artifact in ("best_model.onnx", "best_model.tflite"):
        done = run_main("predict", run / artifact, image)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].split()[1] == "red"
    done = run_main("export", run / "best_model.keras", "--format", "onnx", "litert", "--out", tmp_path / "x.onnx")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "one --format" in done.stderr
    done = run_main("export", run / "best_model.keras", "--format", "coreml")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_batch_norm_folding_is_exact_up_to_rounding(export_runs):
    from imgclf.export.graph import batch_norm_folds

    model = load_model(export_runs["fast-tiny"] / "best_model.keras").model
    folds = batch_norm_folds(model)
    norms = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert sorted(folds) == sorted(norms) and len(norms) == 6  # every conv -> [pool ->] BatchNorm of the recipe
    folded, plain = inference_copy(model), inference_copy(model, fold_batch_norm=False)
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(pixels).numpy(), plain(pixels).numpy(), atol=1e-5)


def test_no_fold_through_a_pool_with_a_negative_scale():
    from imgclf.export.graph import batch_norm_folds

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.MaxPooling2D()(x)
    norm = keras.layers.BatchNormalization()
    outputs = norm(x)
    model = keras.Model(inputs, outputs)
    assert list(batch_norm_folds(model)) == [norm.name]
    norm.gamma.assign(np.array([1.0, -1.0, 1.0, 1.0], np.float32))  # max(-x) != -max(x)
    assert batch_norm_folds(model) == {}
    pixels = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(inference_copy(model)(pixels).numpy(), model(pixels).numpy(), atol=1e-5)


def test_int8_keeps_the_recipes_float_layers(exported):
    from ai_edge_litert import schema_py_generated as schema

    from imgclf.export.writers import _op_outputs

    for recipe, float_layers in (("fast-tiny", ["whiten"]), ("seed", None)):
        path = Path(exported[recipe, "litert-int8"].path)
        content = path.read_bytes()
        assert read_litert_metadata(content).get("float_layers") == float_layers
        subgraph = schema.Model.GetRootAs(content, 0).Subgraphs(0)
        types = {subgraph.Tensors(i).Name().decode(): subgraph.Tensors(i).Type()
                 for i in range(subgraph.TensorsLength())}
        if float_layers:
            (whiten,) = _op_outputs(content, tuple(float_layers))
            assert types[whiten] == schema.TensorType.FLOAT32
        assert sum(t == schema.TensorType.INT8 for t in types.values()) > len(types) // 2  # mostly int8


@pytest.mark.slow  # a training
def test_run_on_a_built_in_dataset_checks_on_its_arrays(tmp_path, monkeypatch):
    """A run on CIFAR-10 through Keras lists array indices in split.csv: the check loads the
    dataset again (here a stand-in LoadedData, since Keras cannot download in tests)."""
    import imgclf.run.folder
    from imgclf import TrainConfig, train
    from imgclf.data.labelled import Images, LoadedData

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 70).astype(np.int32)
    colors = np.array([(200, 40, 40), (40, 190, 40), (40, 40, 200)])
    pixels = np.clip(colors[labels][:, None, None, :] + rng.normal(0, 30, (len(labels), 16, 16, 3)), 0, 255)
    data = LoadedData(Images(labels, ["red", "green", "blue"], array=pixels.astype(np.uint8), size=(16, 16)),
                      None, "arrays")
    run = train(TrainConfig(epochs=1, image_size=16, out=str(tmp_path / "run"), verbose=0), data=data)
    asked = []
    monkeypatch.setattr(imgclf.run.folder, "load_data", lambda config: asked.append(config) or data)
    report = export_model(run / "best_model.keras", "onnx", verbose=False)
    assert asked and asked[0].dataset == "cifar10" and report.images == 210
    assert report.keras_accuracy is not None and report.agreement == 1.0


def test_labels_json_of_another_model_is_not_overwritten(export_runs, tmp_path):
    model_path = export_runs["seed"] / "best_model.keras"
    data = Path(json.loads((export_runs["seed"] / "config.json").read_text())["data_dir"])
    (tmp_path / LABELS_FILE).write_text(json.dumps({"class_names": ["cat", "dog"], "image_size": [16, 16]}))
    with pytest.raises(ExportError, match="belongs to another model"):
        export_model(model_path, "onnx", tmp_path / "m.onnx", check_data=data, verbose=False)
    assert not (tmp_path / "m.onnx").exists()
    assert json.loads((tmp_path / LABELS_FILE).read_text())["class_names"] == ["cat", "dog"]


def test_converter_failure_is_one_export_error(export_runs, monkeypatch, tmp_path):
    def broken(graph, path, metadata, calibration):
        Path(path).write_bytes(b"half")
        raise RuntimeError("converter exploded\nwith details")

    monkeypatch.setitem(WRITERS, "onnx", broken)
    data = Path(json.loads((export_runs["seed"] / "config.json").read_text())["data_dir"])
    with pytest.raises(ExportError, match="the onnx converter failed: RuntimeError: converter exploded$"):
        export_model(export_runs["seed"] / "best_model.keras", "onnx", tmp_path / "m.onnx", check_data=data,
                     verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_check_images_found_from_another_folder(export_runs, monkeypatch, tmp_path):
    """split.csv paths are relative to where training ran (data.json's cwd); export works from anywhere."""
    import csv
    import os

    run = tmp_path / "run"
    shutil.copytree(export_runs["seed"], run, ignore=shutil.ignore_patterns("*.onnx", "*.tflite", "*_savedmodel"))
    data = Path(json.loads((run / "config.json").read_text())["data_dir"])
    with open(run / "split.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    with open(run / "split.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + [[os.path.relpath(r[0], data.parent)] + r[1:] for r in rows[1:]])
    summary = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({**summary, "cwd": str(data.parent)}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert not Path(os.path.relpath(rows[1][0], data.parent)).exists()  # not found from here as written
    report = export_model(run / "best_model.keras", "onnx", verbose=False)
    assert report.images == 210 and report.agreement == 1.0


def test_check_images_are_capped_validation_split_first(export_runs, monkeypatch):
    """At most MAX_CHECK_IMAGES (the 1,000 docs/guide.md promises): the whole validation split first, then a
    stratified sample of the training split; or a sample of --check-data's. (Here the cap is
    lowered to 100, below the run's 210 images.)"""
    module = sys.modules[check_images.__module__]
    assert module.MAX_CHECK_IMAGES == 1000
    monkeypatch.setattr(module, "MAX_CHECK_IMAGES", 100)
    monkeypatch.setattr(module, "MIN_CHECK_IMAGES", 50)
    model_path = export_runs["seed"] / "best_model.keras"
    loaded = load_model(model_path)
    check = check_images(model_path, loaded, None)
    assert check.source == "the run's validation split (42), the run's training split (58)"
    assert len(check.pixels) == 100 and sorted(np.bincount(check.labels[42:])) == [19, 19, 20]
    data = Path(json.loads((export_runs["seed"] / "config.json").read_text())["data_dir"])
    check = check_images(model_path, loaded, data)
    assert check.source == str(data) and len(check.pixels) == 100


def test_the_cli_lists_the_export_formats():
    from imgclf.cli import EXPORT_FORMATS  # kept apart so that `imgclf --help` imports no TensorFlow

    assert EXPORT_FORMATS == FORMATS


@pytest.mark.slow  # a training
def test_a_small_run_exports_without_check_data(tmp_path, capsys):
    """150 images (30 for validation): the check takes the validation split, then the training
    split, then mirrored and shifted copies up to 200; every float format passes, and int8
    passes or fails on accuracy and confident agreement, with its figures printed."""
    from imgclf import TrainConfig, train
    from imgclf.cli import main

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=50, size=(16, 16))
    run = train(TrainConfig(data_dir=str(data), epochs=2, image_size=16, out=str(tmp_path / "run"), verbose=0))
    code = main(["export", str(run / "best_model.keras"), "--format", "savedmodel", "onnx", "litert", "litert-int8"])
    out, err = capsys.readouterr()
    for fmt in ("savedmodel", "onnx", "litert"):
        assert default_path(run / "best_model.keras", fmt).exists(), fmt
    assert out.count("checked on 200 images (the run's validation split (30), the run's training split (120), "
                     "50 mirrored and shifted copies of them)") >= 3
    if code == 0:
        assert "int8: accuracy" in out and "top-two margin of at least 0.1" in out
        assert default_path(run / "best_model.keras", "litert-int8").exists()
    else:
        assert "the int8 export fails the check" in err and "accuracy" in err and "Traceback" not in err
        assert not default_path(run / "best_model.keras", "litert-int8").exists()


def test_check_images_top_up_with_mirrored_and_shifted_copies():
    from imgclf.export.verify import _variants

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 10, 12, 3)).astype(np.uint8)
    labels = np.arange(7)
    made, made_labels = _variants(pixels, labels, 30)
    assert made.shape == (30, 10, 12, 3) and made.dtype == np.uint8
    assert made_labels.tolist() == (list(range(7)) * 5)[:30]
    assert np.array_equal(made[:7], pixels[:, :, ::-1])  # first the mirror images
    assert np.array_equal(made[14:21, :-2, :-2], pixels[:, 2:, 2:])  # then shifted 2 pixels up and left
    assert np.array_equal(made[7:14, :-2, 2:], pixels[:, 2:, 2:][:, :, ::-1])  # the same, mirrored
    assert not any(np.array_equal(m, p) for m in made for p in pixels)  # no copy of an original


@pytest.mark.parametrize("case, problems", [
    ("raw agreement low, confident all agree, accuracy kept", []),
    ("a confident image flips", ["Keras' class on"]),
    ("accuracy drops 2 points", ["accuracy drops 2.00 points"]),
])
def test_int8_is_judged_on_accuracy_and_confident_agreement(case, problems, monkeypatch):
    """100 images: Keras' probabilities, and an 'int8 export' that flips the near ties (raw
    agreement 90%), plus one confident image, or two correct answers."""
    from imgclf.export import verify as export
    expected = np.tile([0.8, 0.15, 0.05], (100, 1))
    expected[:10] = [0.47, 0.46, 0.07]  # near ties: margin 0.01
    labels = np.zeros(100, int)
    got = expected.copy()
    got[:10] = [0.46, 0.47, 0.07]  # the near ties flip: neither wrong nor right for the 10 (labels 2)
    labels[:10] = 2
    if case == "a confident image flips":
        got[50] = [0.1, 0.8, 0.1]
        labels[50] = 2  # wrong either way: accuracy unchanged
    if case == "accuracy drops 2 points":
        got[60:62] = [0.1, 0.8, 0.1]  # Keras right, int8 wrong
    check = export.CheckImages(np.arange(100, dtype=np.uint8)[:, None, None, None].repeat(3, -1), labels, "made up")

    class Fake:
        def predict(self, pixels):
            return got[pixels[:, 0, 0, 0].astype(int)]

    monkeypatch.setattr(export, "open_model", lambda path: Fake())
    if not problems:
        report = verify_artifact("x.tflite", "litert-int8", expected, check)
        assert report.agreement == 0.9 and report.confident_images == 90 and report.confident_agreement == 1.0
        assert report.keras_accuracy == report.export_accuracy == 0.9
        return
    with pytest.raises(ExportError) as caught:
        verify_artifact("x.tflite", "litert-int8", expected, check)
    message = str(caught.value)
    assert all(p in message for p in problems) and "it was deleted" in message and "of all 100" in message
