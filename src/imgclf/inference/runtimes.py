"""Running a model in any of its forms: a `.keras` file, or an export (`export.py`) in its
own runtime. `open_model` picks the runtime from the file:

    .keras                    Keras, through one compiled TensorFlow function
    folder with saved_model.pb  TensorFlow SavedModel (`tf.saved_model.load`)
    .onnx                     ONNX Runtime
    .tflite                   LiteRT (`ai-edge-litert`'s interpreter)

Every runtime takes raw 0-255 RGB pixels, (N, H, W, 3), and returns (N, classes) float32
probabilities. Class names and input size come from inside the artifact (`imgclf.json`
in a `.keras` zip or a SavedModel's assets.extra/, ONNX metadata_props, LiteRT metadata,
each under the key `imgclf`), else from the `labels.json` written beside it.

Keras and TensorFlow are imported only in the branches that need them (.keras, SavedModel):
opening an `.onnx` or `.tflite` file loads neither.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from ..config import DEFAULT_RESIZE, RESIZE_MODES
from ..errors import ModelFileError
from .loaded import LoadedModel, _first_line, keras_function

METADATA_KEY = "imgclf"  # name of the metadata entry inside ONNX and LiteRT files
SAVEDMODEL_METADATA = Path("assets.extra") / "imgclf.json"
LABELS_FILE = "labels.json"
INPUT_NAME = "pixels"  # the exports' input: float32 (N, H, W, 3), raw 0-255 RGB
NO_TENSORFLOW_SUFFIXES = {".onnx": "onnx", ".tflite": "litert"}  # file suffix -> its runtime (TensorFlow-free)


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelFileError(f"{path} is a folder without saved_model.pb: not a SavedModel")
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():  # a FIFO or a device would block the read, or never end it
        raise ModelFileError(f"{path} is not a regular file (a named pipe, socket or device): not a model")
    return NO_TENSORFLOW_SUFFIXES.get(path.suffix.lower(), "keras")  # load_model says what is wrong with the rest


def needs_tensorflow(path: str | Path) -> bool:
    """Whether opening the model at `path` loads TensorFlow (all but .onnx and .tflite files)."""
    return Path(path).suffix.lower() not in NO_TENSORFLOW_SUFFIXES or Path(path).is_dir()


def open_model(path: str | Path, *, unsafe: bool = False) -> LoadedModel:
    """Load a `.keras` model or an exported artifact, ready to predict through `.predict`."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "keras":
        from .modelio import load_model

        loaded = load_model(path, unsafe=unsafe)
        loaded.runtime = keras_function(loaded.model)
        return loaded
    opener = {"savedmodel": _open_savedmodel, "onnx": _open_onnx, "litert": _open_litert}[fmt]
    try:
        runtime, embedded, input_size = opener(path)
    except ModelFileError:
        raise
    except Exception as exc:  # each runtime raises its own types for a damaged file
        raise ModelFileError(f"cannot load {fmt} model {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    metadata = embedded if isinstance(embedded, dict) and embedded else _labels_beside(path)
    names, size = metadata.get("class_names"), metadata.get("image_size") or input_size
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ModelFileError(f"{path}: no class names (a list of strings) inside the file or in {LABELS_FILE} "
                             "beside it")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelFileError(f"{path}: no input size (height, width) inside the file or in {LABELS_FILE} beside it")
    image_size = (int(size[0]), int(size[1]))
    if metadata.get("resize", DEFAULT_RESIZE) not in RESIZE_MODES:
        raise ModelFileError(f"{path}: unknown resize mode {metadata.get('resize')!r} in its metadata")
    if input_size and tuple(input_size) != image_size:
        raise ModelFileError(f"{path}: metadata says {image_size} pixels, the model takes {tuple(input_size)}")
    try:  # calls now: a file that loads but cannot run fails here, and the first request is not slow
        probs = runtime(np.zeros((1, *image_size, 3), np.float32))
    except Exception as exc:
        raise ModelFileError(f"cannot run {fmt} model {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    if probs.shape != (1, len(names)):
        raise ModelFileError(f"{path}: outputs {probs.shape[-1]} values, its metadata names {len(names)} classes")
    try:
        runtime(np.zeros((2, *image_size, 3), np.float32))
    except Exception:  # a model exported with a fixed batch of one: one image per call
        runtime = _one_at_a_time(runtime)
    metadata = {**metadata, "class_names": names}
    return LoadedModel(None, list(names), image_size, metadata, path, runtime=runtime, format=fmt)


def _open_savedmodel(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if "serving_default" not in loaded.signatures:
        raise ModelFileError(f"{path}: the SavedModel has no serving_default signature")
    function = loaded.signatures["serving_default"]
    (name, spec), = function.structured_input_signature[1].items()

    def run(pixels: np.ndarray) -> np.ndarray:
        outputs = function(**{name: tf.constant(np.asarray(pixels, np.float32))})
        return np.asarray(next(iter(outputs.values())), np.float32)
    run.keep_alive = loaded  # the signature needs the loaded object's variables
    metadata_file = path / SAVEDMODEL_METADATA
    metadata = json.loads(metadata_file.read_text(encoding="utf-8")) if metadata_file.exists() else {}
    return run, metadata, _spatial(spec.shape)


def _open_onnx(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelFileError(f"{path}: expected one input, the ONNX model has {len(inputs)}")
    name = inputs[0].name

    def run(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.asarray(pixels, np.float32)})[0], np.float32)
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return run, json.loads(raw) if raw else {}, _spatial(inputs[0].shape)


def _open_litert(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ModelFileError(f"{path}: expected one signature, the LiteRT model has {len(signatures)}")
    key, spec = next(iter(signatures.items()))
    runner = interpreter.get_signature_runner(key)
    name = spec["inputs"][0]
    lock = threading.Lock()  # an interpreter runs one call at a time

    def run(pixels: np.ndarray) -> np.ndarray:
        with lock:
            outputs = runner(**{name: np.asarray(pixels, np.float32)})
        return np.array(next(iter(outputs.values())), np.float32)
    shape = interpreter.get_input_details()[0]["shape_signature"]
    return run, read_litert_metadata(path.read_bytes()), _spatial(shape)


def read_litert_metadata(content: bytes) -> dict:
    """The `imgclf` entry of a LiteRT flatbuffer's metadata, or {}."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_KEY:
            buffer = model.Buffers(entry.Buffer())
            return json.loads(buffer.DataAsNumpy().tobytes().decode("utf-8"))
    return {}


def _one_at_a_time(runtime):
    def run(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([runtime(pixels[i:i + 1]) for i in range(len(pixels))])
    return run


def _labels_beside(path: Path) -> dict:
    labels = (path if path.is_dir() else path.parent) / LABELS_FILE
    if not labels.exists():
        return {}
    try:
        content = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {labels}: {_first_line(exc)}") from None
    if isinstance(content, list):  # a bare list of class names
        return {"class_names": content}
    if not isinstance(content, dict):
        raise ModelFileError(f"{labels}: expected an object with class_names and image_size, or a list of names")
    return content


def _spatial(shape) -> tuple[int, int] | None:
    """(height, width) of an NHWC input shape when both are fixed numbers."""
    shape = list(shape)
    if len(shape) == 4 and all(isinstance(v, (int, np.integer)) and v > 0 for v in shape[1:3]):
        return int(shape[1]), int(shape[2])
    return None



