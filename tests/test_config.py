import pytest

from imgclf import ImgclfError, TrainConfig


def test_defaults_follow_the_original_description():
    config = TrainConfig().resolved()
    assert (config.model, config.epochs, config.val_split, config.image_size) == ("seed", 50, 0.2, 32)
    assert (config.batch_size, config.learning_rate) == (32, 1e-3)


def test_recipe_defaults_fill_only_what_is_not_given():
    config = TrainConfig(model="fast", epochs=3).resolved()
    assert config.epochs == 3 and config.batch_size == 1000
    half = TrainConfig(model="fast", batch_size=500).resolved()  # fast: learning rate scales with the batch
    assert half.learning_rate == pytest.approx(config.learning_rate / 2)


def test_cli_lists_every_registered_model_with_its_defaults():
    from imgclf.cli import MODEL_DEFAULTS
    from imgclf.models import RECIPES

    assert sorted(MODEL_DEFAULTS) == sorted(RECIPES)
    for name, defaults in MODEL_DEFAULTS.items():
        assert defaults == {"epochs": RECIPES[name].epochs, "batch_size": RECIPES[name].batch_size}, name


def test_unknown_key_is_rejected():
    with pytest.raises(ImgclfError, match="unknown configuration key.*epochz"):
        TrainConfig.from_dict({"epochz": 3})


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("epochs", 2.5), ("val_split", "x"), ("seed", True)])
def test_wrong_type_is_rejected(key, value):
    with pytest.raises(ImgclfError, match=key):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("batch_size", -4), ("val_split", 0.0), ("val_split", 1.0), ("image_size", 0),
    ("learning_rate", 0.0), ("limit", 1), ("precision", "float8"),
])
def test_impossible_values_are_rejected(key, value):
    with pytest.raises(ImgclfError, match=key):
        TrainConfig.from_dict({key: value})


def test_round_trip_through_dict():
    config = TrainConfig(data_dir="x", epochs=3, learning_rate=0.01)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(epochs=4).epochs == 4
