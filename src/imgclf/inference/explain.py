"""Why the model chose a class: Grad-CAM heatmaps (Selvaraju et al. 2017; the Keras example
keras.io/examples/vision/grad_cam).

For one feature map A of the model (K channels) and a class c, the weight of channel k is the
mean over positions of d(score_c) / d(A_k), and the heatmap is ReLU(sum_k weight_k A_k),
scaled to [0, 1] and resized to the input. score_c is the class's logit, the input of the
final softmax (the log-probability where a model has no separate logits), so a confident
prediction still has a gradient.

Which feature map: the recipe names it (`Recipe.explain_layer`): the last conv of `seed`, the
end of the second block of the `fast` family, the backbone's last feature map for the
pretrained recipes; `--init` models keep their source's recipe. A model from elsewhere uses its
last layer with a 2-D feature map. A chain of layers (each feeding the next: most imgclf
models) runs layer by layer, watching the chosen one; any other model with one input and one
output (`fast-deep`'s residual blocks) runs as a Keras model whose outputs are the chosen
layer's, the softmax's input and the probabilities (the Keras example's way). A model with
several inputs or outputs is refused.

Keras and TensorFlow only: a gradient tape over the chosen layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, ModelFileError
from ..run.atomic import atomic_path, write_csv
from .loaded import LoadedModel

EXPLAIN_BATCH = 32  # images per gradient pass
OVERLAY_ALPHA = 0.45  # weight of the heatmap's colours over the image
OVERLAY_MIN_SIDE = 224  # overlays are enlarged (by a whole factor) to at least this many pixels a side
HEATMAPS_FILE = "heatmaps.npz"
PREDICTIONS_FILE = "explanations.csv"


class Explainer:
    """Grad-CAM of one Keras model (a `LoadedModel` from a `.keras` file)."""

    def __init__(self, loaded: LoadedModel, compile: bool = True):
        """`compile`: trace the computation into one TensorFlow function on first use (~1-2 s,
        then milliseconds a call: the CLI, the service); else run it eagerly (a few tenths of a
        second a batch, no tracing: the report's few images)."""
        if loaded.model is None:
            raise ModelFileError(f"{loaded.path}: Grad-CAM needs the .keras model (its gradients); an exported "
                                 f"{loaded.format} file has none")
        model = loaded.model
        chain = is_chain(model)
        if not chain and (len(model.inputs) != 1 or len(model.outputs) != 1):
            raise ModelFileError(f"{loaded.path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} "
                                 "outputs: Grad-CAM explains models of one image input and one output")
        self.loaded = loaded
        self.layers = _chain(model)
        self.index = explain_layer(loaded)
        self.layer = self.layers[self.index]
        self.layer_name = self.layer.name
        self._function = None if compile else self._gradcam
        self._graph = None if chain else self._graph_model()

    def _last(self) -> int:
        """Index of the last layer that is not a calibration temperature: the softmax's, if any."""
        from ..models.layers import Temperature

        return max(i for i, layer in enumerate(self.layers) if not isinstance(layer, Temperature))

    def _graph_model(self):
        """A model that is not a chain, with the explained layer's output, the last layer's input
        and the probabilities as its outputs (each of these layers is called once)."""
        import keras

        model, last = self.loaded.model, self.layers[self._last()]
        try:
            return keras.Model(model.inputs, [self.layer.output, last.input, model.outputs[0]])
        except (AttributeError, ValueError) as error:  # a layer called at several places has no one output
            raise ModelFileError(f"{self.loaded.path}: Grad-CAM cannot follow this model's graph ({error})") from None

    def heatmaps(self, pixels: np.ndarray, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((N, H, W) float32 heatmaps in [0, 1] at the model's input size, (N, classes)
        probabilities) for raw 0-255 pixels (N, H, W, 3); each heatmap is of `classes[i]`, by
        default the predicted class."""
        if not len(pixels):
            return (np.zeros((0, *self.loaded.image_size), np.float32),
                    np.zeros((0, len(self.loaded.class_names)), np.float32))
        maps, probs = [], []
        for start in range(0, len(pixels), EXPLAIN_BATCH):
            batch = np.asarray(pixels[start:start + EXPLAIN_BATCH], np.float32)
            chosen = None if classes is None else np.asarray(classes[start:start + EXPLAIN_BATCH], np.int32)
            heat, prob = self._batch(batch, chosen)
            maps.append(heat)
            probs.append(prob)
        return np.concatenate(maps), np.concatenate(probs)

    def _batch(self, pixels: np.ndarray, classes: np.ndarray | None):
        import tensorflow as tf

        if self._function is None:
            height, width = self.loaded.image_size
            self._function = tf.function(self._gradcam, input_signature=[
                tf.TensorSpec([None, height, width, 3], tf.float32), tf.TensorSpec([None], tf.int32)],
                reduce_retracing=True)
        chosen = np.full(len(pixels), -1, np.int32) if classes is None else classes
        heat, probs = self._function(tf.constant(pixels), tf.constant(chosen))
        return np.asarray(heat, np.float32), np.asarray(probs, np.float32)

    def _forward(self, x, watch=None):
        """Run the layers in turn: (the logits, the probabilities); `watch(tensor)` is called on
        the explained layer's output."""
        from keras import ops

        from ..models.layers import PROBABILITY_FLOOR

        last = self._last()
        logits = None
        if self._graph is not None:
            features, before, x = self._graph(x, training=False)
            logits = _logits(self.layers[last], before)
            if watch is not None:
                watch(features)
        else:
            for i, layer in enumerate(self.layers):
                if i == last:
                    logits = _logits(layer, x)
                x = layer(x, training=False)
                if i == self.index and watch is not None:
                    watch(x)
        if logits is None:
            logits = ops.log(ops.maximum(ops.cast(x, "float32"), PROBABILITY_FLOOR))
        return ops.cast(logits, "float32"), ops.cast(x, "float32")

    def _gradcam(self, pixels, classes):
        import tensorflow as tf

        seen = {}

        with tf.GradientTape() as tape:
            def watch(tensor):
                tape.watch(tensor)
                seen["features"] = tensor

            logits, probs = self._forward(pixels, watch)
            classes = tf.where(classes < 0, tf.argmax(probs, axis=1, output_type=tf.int32), classes)
            score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        features = seen["features"]
        grads = tf.cast(tape.gradient(score, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, self.loaded.image_size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return cam, probs


def _logits(layer, x):
    """The logits of the final softmax layer `layer` given its input `x` (None when it is not one)."""
    import keras
    from keras import ops

    if getattr(layer, "activation", None) is not keras.activations.softmax:
        return None
    if isinstance(layer, keras.layers.Dense):
        out = ops.matmul(ops.cast(x, "float32"), ops.cast(layer.kernel, "float32"))
        return out + ops.cast(layer.bias, "float32") if layer.use_bias else out
    if isinstance(layer, keras.layers.Activation):
        return x
    return None


def _chain(model) -> list:
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def is_chain(model) -> bool:
    """Whether each layer of `model` takes the previous layer's output and nothing else, from
    its configuration (a Sequential model always does)."""
    import keras

    if isinstance(model, keras.Sequential):
        return True
    config = model.get_config()
    entries = config.get("layers", [])
    inputs, outputs = _names(config.get("input_layers")), _names(config.get("output_layers"))
    if len(inputs) != 1 or not entries or outputs != [entries[-1]["name"]]:
        return False
    for previous, entry in zip(entries, entries[1:]):
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) != 1 or _sources(nodes[0]) != [previous["name"]]:
            return False
    return True


def _names(references) -> list[str]:
    """Layer names of a config's input_layers or output_layers: [name, node, tensor] for one,
    a list of them for several."""
    if not references:
        return []
    return [references[0]] if isinstance(references[0], str) else [reference[0] for reference in references]


def _sources(value) -> list[str]:
    """The layers whose outputs a serialised call (an inbound node) takes."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for item in value.values() for name in _sources(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _sources(item)]
    return []


def explain_layer(loaded: LoadedModel) -> int:
    """Index (among the model's layers, the input left out) of the layer Grad-CAM explains: the
    one its recipe names, else the last one whose output is a feature map (N, H, W, C)."""
    from ..models.recipes import RECIPE_DEFAULTS, saved_recipe
    from ..models.registry import get_recipe

    layers = _chain(loaded.model)
    name = saved_recipe(loaded.metadata)
    if name in RECIPE_DEFAULTS and get_recipe(name).explain_layer is not None:
        return get_recipe(name).explain_layer(layers)
    maps = [i for i, layer in enumerate(layers) if len(_output_shape(layer)) == 4]
    if not maps:
        raise ModelFileError(f"{loaded.path}: the model has no convolution layer (no 2-D feature map) for Grad-CAM "
                             "to explain")
    return maps[-1]


def _output_shape(layer) -> tuple:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


def overlay(pixels: np.ndarray, heatmap: np.ndarray, min_side: int = OVERLAY_MIN_SIDE):
    """A PIL image: `pixels` (H, W, 3 uint8) enlarged by a whole factor to at least `min_side`
    pixels a side, with `heatmap` (H, W in [0, 1]) coloured over it (jet: blue low, red high)."""
    from matplotlib import colormaps
    from PIL import Image

    height, width = heatmap.shape
    factor = max(1, math.ceil(min_side / min(height, width)))
    size = (width * factor, height * factor)
    image = np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).resize(size, Image.Resampling.NEAREST),
                       np.float32)
    heat = np.asarray(Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(size,
                                                                                      Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    return Image.fromarray(np.clip((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours, 0, 255).astype(np.uint8))


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    overlay(pixels, heatmap).save(buffer, format="PNG")
    return buffer.getvalue()


def class_index(loaded: LoadedModel, name: str | None) -> int | None:
    """The index of the class `name` (None: the predicted class), or a one-line error."""
    if name is None:
        return None
    if name not in loaded.class_names:
        shown = ", ".join(loaded.class_names[:10]) + (", ..." if len(loaded.class_names) > 10 else "")
        raise DataError(f"--class {name!r} is not one of the model's classes ({shown})")
    return loaded.class_names.index(name)


@dataclass
class Explanation:
    name: str  # the file as given
    predicted: str
    confidence: float
    explained: str  # the class the heatmap is of
    overlay: str  # the overlay's file name in the output folder


def explain_files(loaded: LoadedModel, inputs: list[str], out: str | Path, *, class_name: str | None = None,
                  verbose: int = 0) -> tuple[list[Explanation], list[tuple[str, str]]]:
    """Grad-CAM of every image among `inputs` (files, folders, globs) into the folder `out`: an
    overlay PNG per image, `explanations.csv` and `heatmaps.npz` (the raw heatmaps at the
    model's input size, keyed by file name). Returns (explanations, skipped files)."""
    from ..data.decode import decode_paths
    from .predict import expand_paths

    explainer = Explainer(loaded)  # a model Grad-CAM cannot explain fails before any file is read
    wanted = class_index(loaded, class_name)
    paths = expand_paths(inputs)
    decoded = decode_paths(paths, loaded.image_size, verbose=verbose, resize=loaded.resize)
    names = [paths[i] for i in decoded.kept]
    classes = None if wanted is None else np.full(len(names), wanted, np.int32)
    maps, probs = explainer.heatmaps(decoded.pixels, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    explanations, used = [], set()
    for i, name in enumerate(names):
        file = _overlay_name(name, used)
        with atomic_path(out / file, suffix=".png") as tmp:
            overlay(decoded.pixels[i], maps[i]).save(tmp, format="PNG")
        top = int(probs[i].argmax())
        explained = loaded.class_names[top if wanted is None else wanted]
        explanations.append(Explanation(name, loaded.class_names[top], float(probs[i, top]), explained, file))
    with atomic_path(out / HEATMAPS_FILE, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **{name: maps[i] for i, name in enumerate(names)})
    write_csv(out / PREDICTIONS_FILE, ["file", "class", "confidence", "explained_class", "overlay"],
              [[e.name, e.predicted, f"{e.confidence:.6f}", e.explained, e.overlay] for e in explanations])
    return explanations, decoded.skipped


def _overlay_name(path: str, used: set[str]) -> str:
    stem = Path(path).stem or "image"
    name, n = f"{stem}.gradcam.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.gradcam.png"
    used.add(name)
    return name
