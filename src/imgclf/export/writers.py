"""Exporting a saved model to other runtimes, and proving each export predicts what Keras does.

    imgclf export MODEL --format savedmodel | onnx | litert | litert-int8 [--out PATH]

Every export takes raw 0-255 RGB pixels, float32 (N, H, W, 3), and returns probabilities,
like the `.keras` file. Steps:

1. An inference copy of the model: float32 throughout (mixed-precision models compute in
   bfloat16, which ONNX Runtime and LiteRT's CPU kernels do not run) and without the
   augmentation layers, which are the identity at inference but leave random ops in a traced
   graph (ONNX Runtime refuses `StatelessRandomUniformV2`).
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
4. The artifact is loaded in its own runtime (`runtimes.open_model`) and run on the check
   images (`check_images`: up to MAX_CHECK_IMAGES of --check-data, the run's validation split,
   then its training split; at least MIN_CHECK_IMAGES, topped up with mirrored and shifted
   copies when a run is smaller). Float formats must give Keras' top-1 class on every image
   and probabilities within FLOAT_TOLERANCE. int8 is judged by what users need: accuracy on
   the labelled check images at most INT8_MAX_ACCURACY_DROP below Keras', and Keras' class on
   INT8_CONFIDENT_AGREEMENT of the images where Keras' top two classes are at least
   INT8_CONFIDENT_MARGIN apart (a near tie flips under any rounding and says nothing of the
   export); the raw agreement is reported too. A failure deletes the artifact and raises
   `ExportError`. The file is written under a temporary name and renamed only once checked,
   so an existing export is replaced only by a good one.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.decode import decode_paths
from ..errors import DataError, ImgclfError
from ..evaluation.evaluate import split_images
from ..inference.modelio import LoadedModel, _first_line, keras_function, load_model
from ..inference.runtimes import INPUT_NAME, LABELS_FILE, METADATA_KEY, SAVEDMODEL_METADATA, file_hash, open_model
from ..run.atomic import PARTIAL_MARK, write_json

FORMATS = ("savedmodel", "onnx", "litert", "litert-int8")
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "litert-int8": ".tflite"}  # a SavedModel is a folder
FLOAT_TOLERANCE = 1e-3  # max |probability difference| allowed between a float export and Keras
INT8_MAX_ACCURACY_DROP = 0.01  # int8 accuracy on the labelled check images: at most 1 point below Keras'
INT8_CONFIDENT_MARGIN = 0.1  # Keras' top-two probability margin from which an image is "confident"
INT8_CONFIDENT_AGREEMENT = 0.99  # share of the confident images on which int8 must pick Keras' class
TIE = 1e-6  # Keras' top two probabilities this close: either class is Keras' answer
MIN_CHECK_IMAGES = 200
MAX_CHECK_IMAGES = 1000  # stratified samples of the run's splits, when they are larger
CALIBRATION_IMAGES = 500  # representative images for int8 quantization
SAMPLE_SEED = 0
CHECK_BATCH = 100
# Layers that are the identity at inference; dropped from the exported graph.
AUGMENTATION_LAYERS = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                       "RandomBrightness")


class ExportError(ImgclfError):
    """An export could not be written, or does not predict what the Keras model does."""


@dataclass
class ExportReport:
    format: str
    path: str
    bytes: int
    images: int  # check images
    check_source: str
    agreement: float  # share of check images with the same top-1 class as Keras
    max_abs_diff: float  # largest |probability difference| from Keras
    keras_accuracy: float | None  # on the labelled check images
    export_accuracy: float | None
    seconds: float
    confident_images: int = 0  # check images whose Keras top-two margin is at least INT8_CONFIDENT_MARGIN
    confident_agreement: float | None = None  # share of those with Keras' class (None: there are none)
    labelled_images: int = 0  # check images with a known class (the accuracies are on these)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckImages:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray | None  # class indices, -1 where unknown; None when none is known
    source: str


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


def inference_copy(model, fold_batch_norm: bool = True):
    """The model in float32, without augmentation layers, with the same weights; and with each
    BatchNormalization folded into the Conv2D before it (`batch_norm_folds`), unless told not to."""
    import keras

    folds = batch_norm_folds(model) if fold_batch_norm else {}
    convs = {conv.name for conv in folds.values()}

    class PassThrough(keras.layers.Layer):  # takes the replaced layer's call arguments (mask, training)
        def call(self, inputs, mask=None, training=None):
            return inputs

    def clone(layer):
        if isinstance(layer, keras.Model):  # a nested backbone (keras.applications): float32 inside too
            return keras.models.clone_model(layer, clone_function=clone)
        if type(layer).__name__ in AUGMENTATION_LAYERS or layer.name in folds:
            return PassThrough(name=layer.name, dtype="float32")
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        if layer.name in convs:
            config["use_bias"] = True
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.weights and layer.name not in convs:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    for norm, conv in folds.items():
        copy.get_layer(conv.name).set_weights(_folded_weights(conv, model.get_layer(norm)))
    return copy


def batch_norm_folds(model) -> dict:
    """BatchNormalization layer name -> the Conv2D it can be folded into: the conv feeds the
    norm directly or through a MaxPooling2D, and nothing else reads the conv's (or the pool's)
    output. Through a max-pool only when every channel's scale is positive, since
    max(s x + b) = s max(x) + b needs s > 0. The fold is exact up to float rounding; int8
    quantization then sees one conv with a bias instead of a conv, a pool and a separate
    multiply-add, which it quantizes with less error."""
    import keras

    folds = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3) \
                or len(layer._inbound_nodes) != 1:
            continue
        parent = layer._inbound_nodes[0].parent_nodes[0].operation
        through_pool = isinstance(parent, keras.layers.MaxPooling2D)
        if through_pool:
            if len(parent._outbound_nodes) != 1 or (layer.scale and np.any(layer.gamma.numpy() <= 0)):
                continue
            parent = parent._inbound_nodes[0].parent_nodes[0].operation
        if isinstance(parent, keras.layers.Conv2D) and len(parent._outbound_nodes) == 1 \
                and parent.activation is keras.activations.linear:
            folds[layer.name] = parent
    return folds


def _folded_weights(conv, norm) -> list[np.ndarray]:
    weights = conv.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    mean, variance = norm.moving_mean.numpy().astype(np.float64), norm.moving_variance.numpy().astype(np.float64)
    scale = 1 / np.sqrt(variance + norm.epsilon)
    if norm.scale:
        scale = scale * norm.gamma.numpy()
    offset = norm.beta.numpy().astype(np.float64) if norm.center else 0.0
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + offset).astype(np.float32)]


def artifact_metadata(loaded: LoadedModel, model_path: Path, fmt: str) -> dict:
    from ..models.registry import RECIPES

    recipe = RECIPES.get(loaded.metadata.get("model_name"))
    float_layers = list(recipe.float_layers) if fmt == "litert-int8" and recipe else []
    return {
        "class_names": list(loaded.class_names),
        "image_size": list(loaded.image_size),
        "resize": loaded.resize,
        "input": f"{INPUT_NAME}: float32 (N, height, width, 3), raw RGB 0-255",
        "output": "float32 (N, classes) probabilities",
        "recipe": loaded.metadata.get("model_name"),
        "format": fmt,
        "source_model": model_path.name,
        "source_sha256": file_hash(model_path),
        **({"float_layers": float_layers} if float_layers else {}),
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


def keras_probabilities(model, check: CheckImages) -> np.ndarray:
    return _batched(keras_function(model), check.pixels)


def verify_artifact(path: str | Path, fmt: str, expected: np.ndarray, check: CheckImages) -> ExportReport:
    """Run the artifact at `path` in its runtime on the check images; raise ExportError unless
    its probabilities agree with Keras' `expected` ones (see the module docstring)."""
    report, same = measure_artifact(path, fmt, expected, check)
    if fmt == "litert-int8":
        problems = int8_problems(report)
        if problems:
            raise ExportError(f"the int8 export fails the check: {'; '.join(problems)} ({int8_figures(report)}); "
                              "it was deleted")
    elif not same.all() or report.max_abs_diff > FLOAT_TOLERANCE:
        raise ExportError(f"the {fmt} export disagrees with Keras: {int((~same).sum())} of {len(same)} top-1 classes "
                          f"differ, max |dp| = {report.max_abs_diff:.2e} (allowed {FLOAT_TOLERANCE:g}); "
                          "it was deleted")
    return report


def measure_artifact(path: str | Path, fmt: str, expected: np.ndarray,
                     check: CheckImages) -> tuple[ExportReport, np.ndarray]:
    """The artifact's figures against Keras' `expected` probabilities on the check images, and
    which images got Keras' class; ExportError when it does not load or run."""
    try:
        artifact = open_model(path)
    except ImgclfError as exc:
        raise ExportError(f"the {fmt} export does not load in its runtime: {exc}") from None
    try:
        got = _batched(artifact.predict, check.pixels)
    except Exception as exc:
        raise ExportError(f"the {fmt} export fails in its runtime: {type(exc).__name__}: {_first_line(exc)}") \
            from None
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"the {fmt} export gives outputs of shape {got.shape} "
                          f"(finite: {bool(np.all(np.isfinite(got)))}), Keras {expected.shape}")
    # A top-1 "disagreement" on a near-exact tie in Keras' own output is float rounding, not a
    # different model: classes within TIE of each other count as the same answer.
    top = np.sort(expected, axis=1)
    margin = top[:, -1] - top[:, -2] if expected.shape[1] > 1 else np.ones(len(expected))
    same = (expected.argmax(1) == got.argmax(1)) | (margin <= TIE)
    diff = float(np.abs(expected - got).max())
    labelled = check.labels >= 0 if check.labels is not None else np.zeros(len(same), bool)
    accuracy = (lambda p: float((p.argmax(1) == check.labels)[labelled].mean())) if labelled.any() else None
    confident = margin >= INT8_CONFIDENT_MARGIN
    report = ExportReport(fmt, str(path), 0, len(check.pixels), check.source, float(same.mean()), diff,
                          accuracy(expected) if accuracy else None, accuracy(got) if accuracy else None, 0.0,
                          confident_images=int(confident.sum()),
                          confident_agreement=float(same[confident].mean()) if confident.any() else None,
                          labelled_images=int(labelled.sum()))
    return report, same


def int8_problems(report: ExportReport) -> list[str]:
    """Why an int8 export is not good enough (module docstring, step 4); [] when it is."""
    problems = []
    if report.keras_accuracy is not None:
        drop = report.keras_accuracy - report.export_accuracy
        if drop > INT8_MAX_ACCURACY_DROP + 1e-9:
            problems.append(f"accuracy drops {drop * 100:.2f} points (allowed {INT8_MAX_ACCURACY_DROP * 100:g})")
    if report.confident_agreement is not None and report.confident_agreement < INT8_CONFIDENT_AGREEMENT:
        problems.append(f"Keras' class on {report.confident_agreement:.1%} of the confident images "
                        f"(needs {INT8_CONFIDENT_AGREEMENT:.0%})")
    return problems


def int8_figures(report: ExportReport) -> str:
    """The int8 check's figures on one line."""
    parts = []
    if report.keras_accuracy is not None:
        parts.append(f"accuracy {report.keras_accuracy:.2%} float, {report.export_accuracy:.2%} int8 "
                     f"on {report.labelled_images} labelled images")
    confident = (f"{report.confident_agreement:.2%}" if report.confident_agreement is not None else "none")
    parts.append(f"same class as Keras on {confident} of the {report.confident_images} images with a top-two "
                 f"margin of at least {INT8_CONFIDENT_MARGIN:g}, {report.agreement:.2%} of all {report.images}")
    return "; ".join(parts)


def _batched(run, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(pixels[i:i + CHECK_BATCH].astype(np.float32)), np.float64)
                           for i in range(0, len(pixels), CHECK_BATCH)])


def print_report(report: ExportReport) -> None:
    print(f"wrote {report.path} ({report.format}, {report.bytes / 1e6:.2f} MB) in {report.seconds:.1f}s")
    print(f"checked on {report.images} images ({report.check_source}): same class as Keras on "
          f"{report.agreement:.2%}, max |dp| {report.max_abs_diff:.2e}")
    if report.format == "litert-int8":
        print(f"int8: {int8_figures(report)}")
    elif report.keras_accuracy is not None:
        drop = report.keras_accuracy - report.export_accuracy
        print(f"accuracy: Keras {report.keras_accuracy:.4f}, export {report.export_accuracy:.4f} "
              f"(drop {drop * 100:+.2f} points)")


# --- the images to check and calibrate with -------------------------------------------------

def check_images(model_path: Path, loaded: LoadedModel, folder: str | Path | None) -> CheckImages:
    """Up to MAX_CHECK_IMAGES images to check an export on: `folder`'s (--check-data) when
    given, then stratified samples of the run's validation split and of its training split, as
    many as are still wanted. The check compares two runtimes on the same pixels, so images
    seen in training serve as well as unseen ones. Fewer than MIN_CHECK_IMAGES are topped up
    with mirrored and shifted copies of them (labels kept: `_variants`). Without --check-data,
    a model outside its run folder is an error."""
    parts: list[CheckImages] = []
    if folder is not None:
        parts.append(folder_images(folder, loaded, MAX_CHECK_IMAGES))
    problems = []
    for subset in ("val", "train"):
        wanted = MAX_CHECK_IMAGES - sum(len(part.pixels) for part in parts)
        if wanted <= 0:
            break
        try:
            parts.append(run_images(model_path, loaded, subset, wanted))
        except DataError as exc:  # no run folder, a split without images, images moved away
            problems.append(exc)
    parts = [part for part in parts if len(part.pixels)]
    if not parts:
        raise problems[0] if problems else DataError("no usable images to check the export on; "
                                                     "pass --check-data DIR")
    pixels = np.concatenate([part.pixels for part in parts])
    labels = np.concatenate([part.labels if part.labels is not None else np.full(len(part.pixels), -1)
                             for part in parts])
    sources = [f"{part.source} ({len(part.pixels)})" for part in parts] if len(parts) > 1 else [parts[0].source]
    if len(pixels) < MIN_CHECK_IMAGES:
        extra_pixels, extra_labels = _variants(pixels, labels, MIN_CHECK_IMAGES - len(pixels))
        sources.append(f"{len(extra_pixels)} mirrored and shifted copies of them")
        pixels, labels = np.concatenate([pixels, extra_pixels]), np.concatenate([labels, extra_labels])
    return CheckImages(pixels, labels if (labels >= 0).any() else None, ", ".join(sources))


def _variants(pixels: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` new images made from `pixels`: each mirrored, then shifted by up to 2 pixels
    (edges reflected), in a fixed order; labels kept (a mirror or a small shift keeps the class)."""
    views = [(flip, dy, dx) for dy, dx in [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2), (1, 0), (0, 1), (-1, 0),
                                           (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]
             for flip in (True, False) if flip or (dy, dx) != (0, 0)]  # every view but the image itself
    padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    height, width = pixels.shape[1:3]
    made, made_labels = [], []
    for flip, dy, dx in views:
        view = padded[:, 2 + dy:2 + dy + height, 2 + dx:2 + dx + width]
        made.append(view[:, :, ::-1] if flip else view)
        made_labels.append(labels)
        if sum(len(m) for m in made) >= count:
            break
    return np.concatenate(made)[:count], np.concatenate(made_labels)[:count]


def calibration_images(model_path: Path, loaded: LoadedModel, folder: str | Path | None,
                       check: CheckImages, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """`count` representative images for int8 quantization: `folder`'s, or the run's training
    split's, or (neither at hand) the check images."""
    if folder is not None:
        return folder_images(folder, loaded, count).pixels
    try:
        return run_images(model_path, loaded, "train", count).pixels
    except DataError:
        return check.pixels[:count]


def folder_images(folder: str | Path, loaded: LoadedModel, limit: int) -> CheckImages:
    """Images under `folder`, labelled when their parent folders are the model's class names."""
    from ..inference.predict import expand_paths

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    paths = expand_paths([str(folder)])
    if len(paths) > limit:
        index = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(paths), limit, replace=False))
        paths = [paths[i] for i in index]
    decoded = decode_paths(paths, loaded.image_size, resize=loaded.resize)
    kept = [paths[i] for i in decoded.kept]
    parents = [Path(p).parent.name for p in kept]
    labels = None
    if kept and all(name in loaded.class_names for name in parents):
        labels = np.array([loaded.class_names.index(name) for name in parents])
    return CheckImages(decoded.pixels, labels, str(folder))


def run_images(model_path: Path, loaded: LoadedModel, subset: str, limit: int) -> CheckImages:
    """A stratified sample of the run's `subset` ("train" or "val") images (`split_images`)."""
    option = "--check-data" if subset == "val" else "--calibration-data"
    images = split_images(model_path.parent, loaded, subset, limit, seed=SAMPLE_SEED, hint=f"; pass {option} DIR")
    which = "validation" if subset == "val" else "training"
    return CheckImages(images.array, images.labels, f"the run's {which} split")


# --- files -----------------------------------------------------------------------------------

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
