import numpy as np
import pytest

from imgclf import ImgclfError
from imgclf.models.recipes import RECIPE_DEFAULTS, Recipe
from imgclf.models.registry import create_model, get_recipe


# The ImageNet backbones at their smallest side, 32, are built, trained, saved and loaded in
# test_backbones.py (at 32x48); here they refuse 16.
@pytest.mark.parametrize("name, size", [(name, size) for size in (16, 32) for name in sorted(RECIPE_DEFAULTS)
                                        if size < 32 or RECIPE_DEFAULTS[name].min_image_size < 32])
def test_every_registered_model_builds_and_outputs_probabilities(name, size):
    if size < RECIPE_DEFAULTS[name].min_image_size:  # the ImageNet backbones take 32 pixels and more
        with pytest.raises(ImgclfError, match=f"at least {RECIPE_DEFAULTS[name].min_image_size}x"):
            create_model(name, (size, size, 3), 4)
        return
    model = create_model(name, (size, size, 3), 4)
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("float32"), verbose=0)
    assert probs.shape == (2, 4) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ImgclfError, match="unknown model 'nope'.*seed"):
        create_model("nope", (32, 32, 3), 10)
    with pytest.raises(ImgclfError, match="unknown model 'nope'"):
        get_recipe("nope")


def test_every_row_names_a_module_that_builds_its_recipe():
    for name, row in RECIPE_DEFAULTS.items():
        assert isinstance(get_recipe(name), Recipe), (name, row.module)


def test_data_dependent_models_take_training_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    generic = create_model("fast-tiny", (16, 16, 3), 3)
    informed = create_model("fast-tiny", (16, 16, 3), 3, train_pixels=pixels)
    assert get_recipe("fast-tiny").needs_data and not get_recipe("seed").needs_data
    assert not np.allclose(generic.get_layer("whiten").kernel.numpy(), informed.get_layer("whiten").kernel.numpy())
