import keras
import numpy as np
import pytest

from imgclf import ImgclfError
from imgclf.models import MODELS, create_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [16, 32])
def test_every_registered_model_builds_and_outputs_probabilities(name, size):
    model = create_model(name, (size, size, 3), 4)
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("float32"), verbose=0)
    assert probs.shape == (2, 4)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)


def test_seed_model_is_the_described_architecture():
    model = create_model("seed", (32, 32, 3), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert isinstance(model, keras.Sequential)
    assert kinds[0] == "Rescaling" and model.layers[0].scale == pytest.approx(1 / 255)
    assert kinds[1:4] == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert kinds.count("Conv2D") == 3 and kinds.count("MaxPooling2D") == 3
    assert "Dropout" in kinds and kinds.count("Dense") >= 2
    assert model.layers[-1].activation.__name__ == "softmax"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ImgclfError, match="unknown model 'nope'.*seed"):
        create_model("nope", (32, 32, 3), 10)
