"""Starting from a model trained earlier (`--init RUN_DIR|MODEL.keras`): its layers and
weights, with a new classifier for the new classes. Any imgclf model works, so a network
trained on CIFAR-10 becomes the backbone of a run on someone's own photos.

The new model keeps the source's architecture (and so its recipe: optimizer, loss,
augmentation) and every weight but the last Dense layer's, which starts fresh with one unit
per new class. Fully convolutional models (the fast recipes) also take another image size;
a model whose Dense layers fix the input size (`seed`: Flatten then Dense) needs the size
it was trained at.
"""

from __future__ import annotations

from pathlib import Path

import keras

from ..errors import DataError
from ..inference.modelio import LoadedModel, load_model, read_metadata
from ..models.recipes import saved_recipe

MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


def init_model_path(init: str | Path) -> Path:
    """A .keras file, or a run folder's best_model.keras."""
    path = Path(init)
    if path.is_dir():
        path = path / "best_model.keras"
    if not path.is_file():
        raise DataError(f"--init: no model at {path} (give a .keras file or a run folder with best_model.keras)")
    return path


def init_recipe(init: str | Path) -> str:
    """The recipe that trained the model at `init` (read from the file, without loading the model)."""
    path = init_model_path(init)
    name = saved_recipe(read_metadata(path))
    if not name:
        raise DataError(f"--init: {path} does not say which recipe trained it (not a model saved by imgclf)")
    return name


def load_init(init: str | Path) -> LoadedModel:
    return load_model(init_model_path(init))


def transfer_model(source: keras.Model, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """`source` with a fresh last Dense layer of `num_classes` units, for images of
    `input_shape`, in the current global dtype policy (layers pinned to float32 stay so)."""
    heads = [layer for layer in source.layers if isinstance(layer, keras.layers.Dense)]
    if not heads:
        raise DataError(f"--init: the model {source.name} has no Dense classifier to replace")
    head = heads[-1]
    policy = keras.mixed_precision.global_policy().name

    def clone(layer):
        if isinstance(layer, keras.Model):  # a nested backbone (keras.applications): its own input size
            return keras.models.clone_model(layer, input_tensors=keras.Input(shape=input_shape), clone_function=clone)
        config = layer.get_config()
        dtype = config.get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if name in MIXED_POLICIES or (name == "float32" and policy == "float32"):
            config["dtype"] = policy
        if layer is head:
            config["units"] = num_classes
        return type(layer).from_config(config)

    try:
        model = keras.models.clone_model(source, input_tensors=keras.Input(shape=input_shape), clone_function=clone)
        for old, new in zip(source.layers, model.layers):
            if old is not head and old.weights:
                new.set_weights(old.get_weights())
    except ValueError as exc:
        raise DataError(f"--init: the model takes {source.input_shape[1]}x{source.input_shape[2]} images and its "
                        f"layers cannot take {input_shape[0]}x{input_shape[1]}; use --image-size "
                        f"{source.input_shape[1]} ({str(exc).splitlines()[0][:120]})") from None
    return model
