"""Exporting a saved model to other runtimes, and proving each export predicts what Keras does.

    imgclf export MODEL --format savedmodel | onnx | litert | litert-int8 [--out PATH]

Every export takes raw 0-255 RGB pixels, float32 (N, H, W, 3), and returns probabilities,
like the `.keras` file. Steps:

1. An inference copy of the model (`graph.py`): float32 throughout, without the augmentation
   layers, BatchNormalization folded.
2. Keras' own `model.export` writes the artifact: `tf_saved_model`, `onnx` (tf2onnx underneath)
   and `litert` (TFLiteConverter underneath; builtin ops only, so that LiteRT's interpreter runs
   it without TensorFlow's Flex delegate; `litert-int8` adds full-integer quantization with a
   representative dataset). The custom layers of the fast recipes (FusedBatchNorm,
   QuickGELU, the whitening Conv2D) convert as they are: each converter maps them onto standard
   ops (FusedBatchNormV3 -> BatchNormalization, IdentityN of the custom gradient -> Identity),
   and the parity check below proves it for every recipe in the tests.
3. Class names, input size and the source model's hash go inside the artifact (SavedModel:
   assets.extra/imgclf.json; ONNX: metadata_props; LiteRT: a metadata buffer) and into
   `labels.json` beside it.
4. The artifact is loaded in its own runtime and checked against Keras on up to 1,000 images
   (`verify.py`). A failure deletes the artifact and raises `ExportError`. The file is written
   under a temporary name and renamed only once checked, so an existing export is replaced
   only by a good one.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..config import EXPORT_FORMATS
from ..data.decode import file_hash
from ..inference.loaded import LoadedModel, _first_line
from ..inference.modelio import TEMPERATURE_LAYER, load_model
from ..inference.runtimes import INPUT_NAME, LABELS_FILE, METADATA_KEY, SAVEDMODEL_METADATA
from ..run.atomic import PARTIAL_MARK, write_json
from .graph import inference_copy
from .verify import (
    ExportError,
    ExportReport,
    calibration_images,
    check_images,
    keras_probabilities,
    print_report,
    verify_artifact,
)

FORMATS = EXPORT_FORMATS  # config's list, the CLI's choices too


SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "litert-int8": ".tflite"}  # a SavedModel is a folder


def default_path(model_path: str | Path, fmt: str) -> Path:
    model_path = Path(model_path)
    suffix = {"savedmodel": "_savedmodel", "onnx": ".onnx", "litert": ".tflite", "litert-int8": "_int8.tflite"}[fmt]
    return model_path.parent / f"{model_path.stem}{suffix}"


def export_model(model_path: str | Path, fmt: str, out: str | Path | None = None, *,
                 check_data: str | Path | None = None, calibration_data: str | Path | None = None,
                 unsafe: bool = False, verbose: bool = True) -> ExportReport:
    """Export the `.keras` model at `model_path` to `fmt`, check it against Keras, return the report."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    started = time.perf_counter()
    model_path = Path(model_path)
    loaded = load_model(model_path, unsafe=unsafe)
    out = Path(out) if out else default_path(model_path, fmt)
    _check_out_path(out, fmt)
    labels_file = out / LABELS_FILE if fmt == "savedmodel" else out.parent / LABELS_FILE
    _check_labels_file(labels_file, loaded)
    check = check_images(model_path, loaded, check_data)
    calibration = None
    if fmt == "litert-int8":
        calibration = calibration_images(model_path, loaded, calibration_data, check)
    # The reference is the model as Keras runs it (in float32); the exported graph is folded.
    expected = keras_probabilities(inference_copy(loaded.model, fold_batch_norm=False), check)
    graph = inference_copy(loaded.model)
    metadata = artifact_metadata(loaded, model_path, fmt)
    tmp = out.parent / f".{out.stem}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}{SUFFIXES.get(fmt, '')}"
    try:
        try:
            WRITERS[fmt](graph, tmp, metadata, calibration)
        except Exception as exc:  # converters raise their own types: one line for the user
            raise ExportError(f"the {fmt} converter failed: {type(exc).__name__}: {_first_line(exc)}") from None
        report = verify_artifact(tmp, fmt, expected, check)
        _replace(tmp, out)
    finally:
        _remove(tmp)
    # labels.json is shared by the exports beside it: no per-format keys
    labels = {key: value for key, value in metadata.items() if key not in ("format", "float_layers")}
    write_json(labels_file, labels)
    report.path = str(out)
    report.bytes = _size(out)
    report.seconds = round(time.perf_counter() - started, 2)
    if verbose:
        print_report(report)
    return report


def artifact_metadata(loaded: LoadedModel, model_path: Path, fmt: str) -> dict:
    from ..models.recipes import RECIPE_DEFAULTS, saved_recipe
    from ..models.registry import get_recipe

    name = saved_recipe(loaded.metadata)
    recipe = get_recipe(name) if name in RECIPE_DEFAULTS else None
    float_layers = list(recipe.float_layers) if fmt == "litert-int8" and recipe else []
    calibration = loaded.metadata.get("calibration")
    if fmt == "litert-int8" and any(layer.name == TEMPERATURE_LAYER for layer in loaded.model.layers):
        float_layers.append(TEMPERATURE_LAYER)  # a log of 8-bit probabilities would lose the small ones
    return {
        "class_names": list(loaded.class_names),
        "image_size": list(loaded.image_size),
        "resize": loaded.resize,
        "input": f"{INPUT_NAME}: float32 (N, height, width, 3), raw RGB 0-255",
        "output": "float32 (N, classes) probabilities",
        "recipe": name,
        "format": fmt,
        "source_model": model_path.name,
        "source_sha256": file_hash(model_path),
        **({"float_layers": float_layers} if float_layers else {}),
        **({"calibration": calibration} if isinstance(calibration, dict) else {}),
    }


def _signature(graph):
    import tensorflow as tf

    height, width, channels = graph.input_shape[1:]
    return [tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)]


def _write_savedmodel(graph, path: Path, metadata: dict, calibration) -> None:
    graph.export(str(path), format="tf_saved_model", input_signature=_signature(graph), verbose=False)
    (path / SAVEDMODEL_METADATA).parent.mkdir(exist_ok=True)
    (path / SAVEDMODEL_METADATA).write_text(json.dumps(metadata, indent=2, ensure_ascii=False), encoding="utf-8")


def _write_onnx(graph, path: Path, metadata: dict, calibration) -> None:
    import onnx

    with warnings.catch_warnings():  # Keras' tf2onnx patch probes np.object, which NumPy 2 warns about
        warnings.simplefilter("ignore", FutureWarning)
        graph.export(str(path), format="onnx", input_signature=_signature(graph), verbose=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, ensure_ascii=False)
    onnx.save(proto, str(path))


def _write_litert(graph, path: Path, metadata: dict, calibration) -> None:
    import tensorflow as tf

    if calibration is not None:
        content = _int8_litert(graph, calibration, metadata.get("float_layers") or ())
    else:
        # Builtin ops only: LiteRT's interpreter then runs it without TensorFlow's Flex delegate.
        graph.export(str(path), format="litert", input_signature=_signature(graph), verbose=False,
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
        content = path.read_bytes()
    path.write_bytes(add_litert_metadata(content, metadata))


def _int8_litert(graph, calibration: np.ndarray, float_layers: tuple[str, ...], per_channel: bool = True) -> bytes:
    """Full-integer LiteRT model, float32 in and out, calibrated on `calibration`; the layers
    named in `float_layers` (the recipe's) stay float32. Conv and dense weights are quantized
    per output channel (the converter's default), or with one scale per tensor.

    This calls TFLiteConverter directly, from the SavedModel Keras writes (the path Keras'
    own litert export takes), because Keras' export has no way to keep chosen layers in
    float: that takes the converter's QuantizationDebugger with denylisted nodes."""
    import tensorflow as tf

    with int8_converters(graph, calibration, per_channel) as (converter, representative):
        content = converter().convert()
        keep = _op_outputs(content, float_layers)
        if not keep:
            return content
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep)
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=representative,
                                                              debug_options=options)
        return debugger.get_nondebug_quantized_model()


@contextmanager
def int8_converters(graph, calibration: np.ndarray, per_channel: bool = True):
    """(a function making a fresh full-integer TFLiteConverter of `graph`, the representative
    dataset of `calibration`), while the block runs: the SavedModel it converts lives that long."""
    import tempfile

    import tensorflow as tf

    def representative():
        for image in calibration:
            yield [image[None].astype(np.float32)]

    with tempfile.TemporaryDirectory() as saved_model:
        graph.export(saved_model, format="tf_saved_model", input_signature=_signature(graph), verbose=False)

        def converter():
            convert = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            convert.optimizations = [tf.lite.Optimize.DEFAULT]
            convert.representative_dataset = representative
            convert.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            convert._experimental_disable_per_channel = not per_channel  # the converter's only switch for it
            return convert

        # The calibrator and the debugger run tf.lite.Interpreter, which warns of its own deprecation
        # (LiteRT's, which imgclf runs exports with, does not). Main thread, no other thread running.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated",
                                    category=UserWarning)
            yield converter, representative


def _op_outputs(content: bytes, layers: tuple[str, ...]) -> list[str]:
    """Names of the output tensors of the LiteRT ops that come from the Keras layers `layers`
    (op names carry the layer's name as a path part, with Keras' `_1` suffixes)."""
    import re

    from ai_edge_litert import schema_py_generated as schema

    if not layers:
        return []
    pattern = re.compile(r"(^|/)(" + "|".join(map(re.escape, layers)) + r")(_\d+)?/")
    model = schema.Model.GetRootAs(content, 0)
    subgraph = model.Subgraphs(0)
    names = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        for j in range(op.OutputsLength()):
            name = subgraph.Tensors(op.Outputs(j)).Name().decode()
            if pattern.search(name) and not name.endswith(("_dequantize", "_quantize")):
                names.append(name)
    return names


def add_litert_metadata(content: bytes, metadata: dict) -> bytes:
    """The LiteRT flatbuffer with a metadata entry `imgclf` holding `metadata` as JSON."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, ensure_ascii=False).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_KEY.encode()] + [entry]
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


WRITERS = {"savedmodel": _write_savedmodel, "onnx": _write_onnx, "litert": _write_litert,
           "litert-int8": _write_litert}


def _check_out_path(out: Path, fmt: str) -> None:
    if not out.parent.is_dir():
        raise ExportError(f"folder not found for --out: {out.parent}")
    wanted = SUFFIXES.get(fmt)
    if wanted and out.suffix.lower() != wanted:
        raise ExportError(f"a {fmt} export needs a file name ending in {wanted} (got {out.name})")
    if fmt == "savedmodel" and out.exists() and not (out / "saved_model.pb").exists():
        raise ExportError(f"{out} exists and is not a SavedModel; choose another --out")
    if fmt != "savedmodel" and out.is_dir():
        raise ExportError(f"{out} is a folder; --out must be a file name")


def _replace(tmp: Path, out: Path) -> None:
    if out.is_dir():
        old = out.parent / f".{out.name}{PARTIAL_MARK}old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            old.rename(out)  # the previous export stays
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def _check_labels_file(path: Path, loaded: LoadedModel) -> None:
    """labels.json is shared by the exports in a folder: refuse to overwrite another model's."""
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if not isinstance(existing, dict) or existing.get("class_names") != list(loaded.class_names) \
            or existing.get("image_size") != list(loaded.image_size):
        raise ExportError(f"{path} belongs to another model (other classes or input size); "
                          "export into another folder (--out)")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
