import keras
import pytest

from imgclf.models.registry import get_recipe
from imgclf.models.seed import seed_cnn


def test_seed_model_is_the_described_architecture():
    model = seed_cnn((32, 32, 3), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert isinstance(model, keras.Sequential)
    assert kinds[0] == "Rescaling" and model.layers[0].scale == pytest.approx(1 / 255)
    assert kinds[1:4] == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert kinds.count("Conv2D") == 3 and kinds.count("MaxPooling2D") == 3
    assert "Dropout" in kinds and kinds.count("Dense") >= 2
    assert model.layers[-1].activation.__name__ == "softmax"


def test_seed_recipe_trains_with_adam_at_the_given_step_size():
    optimizer = get_recipe("seed").make_optimizer(1e-3, 100, 50)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
