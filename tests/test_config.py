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


def test_unknown_key_is_rejected():
    with pytest.raises(ImgclfError, match="unknown configuration key.*epochz"):
        TrainConfig.from_dict({"epochz": 3})


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("epochs", 2.5), ("val_split", "x"), ("seed", True)])
def test_wrong_type_is_rejected(key, value):
    with pytest.raises(ImgclfError, match=key):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("batch_size", -4), ("val_split", 0.0), ("val_split", 1.0), ("image_size", 0),
    ("learning_rate", 0.0), ("limit", 1), ("precision", "float8"), ("model", "nope"),
    ("image_size", "12x"), ("image_size", "big"), ("image_size", "4x64"), ("resize", "stretch"),
    ("unfreeze", "two"), ("freeze_epochs", -1), ("weights", "no/such/file.h5"),
])
def test_impossible_values_are_rejected(key, value):
    with pytest.raises(ImgclfError, match=key):
        TrainConfig.from_dict({key: value})


def test_round_trip_through_dict():
    config = TrainConfig(data_dir="x", epochs=3, learning_rate=0.01)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(epochs=4).epochs == 4


def test_config_file_must_be_a_json_object(tmp_path):
    from imgclf.config import read_config_file

    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{epochs: 3")
    for name, message in (("list.json", "JSON object"), ("bad.json", "cannot read"), ("none.json", "cannot read")):
        with pytest.raises(ImgclfError, match=message):
            TrainConfig.from_json(tmp_path / name)
    (tmp_path / "ok.json").write_text('{"epochs": 3}')
    assert read_config_file(tmp_path / "ok.json") == {"epochs": 3}


@pytest.mark.parametrize("value,size", [(96, (96, 96)), ("96", (96, 96)), ("120x160", (120, 160)),
                                        (" 120 X 160 ", (120, 160))])
def test_image_size_is_a_side_or_height_x_width(value, size):
    assert TrainConfig(image_size=value).size == size


def test_backbone_options_belong_to_backbones():
    with pytest.raises(ImgclfError, match="weights is for the pretrained backbones, not the seed recipe"):
        TrainConfig.from_dict({"model": "seed", "weights": "imagenet"})
    with pytest.raises(ImgclfError, match="at least 32x32 pixels"):
        TrainConfig.from_dict({"model": "mobilenetv3small", "image_size": 24})
    TrainConfig.from_dict({"model": "auto", "weights": "none"})  # auto may pick a backbone


def test_backbone_defaults_fine_tune_only_from_pretrained_weights():
    pretrained = TrainConfig(model="efficientnetv2b0", image_size=96).resolved(1000)
    assert (pretrained.weights, pretrained.freeze_epochs, pretrained.backbone_lr) == ("imagenet", 3, 0.1)
    scratch = TrainConfig(model="efficientnetv2b0", image_size=96, weights="none").resolved(1000)
    assert (scratch.freeze_epochs, scratch.backbone_lr) == (0, 1.0)
    assert TrainConfig(model="fast").resolved(1000).weights is None


def test_a_configuration_file_that_is_a_pipe_or_a_device_is_refused_unread(tmp_path):
    import os

    from imgclf.config import read_config_file

    os.mkfifo(tmp_path / "config.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, kind in (("config.json", "named pipe"), ("zero.json", "character device")):
        with pytest.raises(ImgclfError, match=f"cannot read configuration file .*{name}: not a regular file: a {kind}"):
            read_config_file(tmp_path / name)
