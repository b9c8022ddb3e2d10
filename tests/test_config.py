import ast
from pathlib import Path

import pytest

from imgclf import ImgclfError, TrainConfig
from imgclf.config import ServeLimits
from imgclf.data.decode import read_config_file


def test_config_imports_nothing_of_imgclf_but_errors():
    """config.py is the bottom layer: every module may read its choices, and it reads none."""
    import imgclf.config

    imported = set()
    for node in ast.walk(ast.parse(Path(imgclf.config.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y; from . import x
            imported |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "imgclf":
            imported.add(node.module.removeprefix("imgclf."))
        elif isinstance(node, ast.Import):
            imported |= {alias.name.removeprefix("imgclf.") for alias in node.names if alias.name.startswith("imgclf")}
    assert imported == {"errors"}


def test_unknown_key_is_rejected():
    with pytest.raises(ImgclfError, match="unknown configuration key.*epochz"):
        TrainConfig.from_dict({"epochz": 3})


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("epochs", 2.5), ("val_split", "x"), ("seed", True)])
def test_wrong_type_is_rejected(key, value):
    with pytest.raises(ImgclfError, match=key):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("batch_size", -4), ("val_split", 0.0), ("val_split", 1.0), ("image_size", 0),
    ("learning_rate", 0.0), ("limit", 1), ("precision", "float8"), ("distribute", "all"),
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
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{epochs: 3")
    for name, message in (("list.json", "JSON object"), ("bad.json", "cannot read"), ("none.json", "cannot read")):
        with pytest.raises(ImgclfError, match=message):
            read_config_file(tmp_path / name)
    (tmp_path / "ok.json").write_text('{"epochs": 3}')
    assert read_config_file(tmp_path / "ok.json") == {"epochs": 3}


@pytest.mark.parametrize("value,size", [(96, (96, 96)), ("96", (96, 96)), ("120x160", (120, 160)),
                                        (" 120 X 160 ", (120, 160))])
def test_image_size_is_a_side_or_height_x_width(value, size):
    assert TrainConfig(image_size=value).size == size


def test_a_configuration_file_that_is_a_pipe_or_a_device_is_refused_unread(tmp_path):
    import os

    os.mkfifo(tmp_path / "config.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, kind in (("config.json", "named pipe"), ("zero.json", "character device")):
        with pytest.raises(ImgclfError, match=f"cannot read configuration file .*{name}: not a regular file: a {kind}"):
            read_config_file(tmp_path / name)


def test_every_train_option_has_its_help_and_every_choice_its_default():
    import dataclasses

    for field in dataclasses.fields(TrainConfig):
        if field.name == "verbose":  # the CLI's --quiet
            continue
        assert field.metadata.get("help"), field.name
        assert field.default in field.metadata.get("choices", (field.default,)), field.name


@pytest.mark.parametrize("limits,fragment", [
    (dict(max_body_mb=0), "request size limit"), (dict(max_body_mb=1e7), "request size limit"),
    (dict(max_images=0), "images per request"), (dict(max_pixels=0), "image size limit"),
])
def test_serve_limits_are_checked_where_they_are_made(limits, fragment):
    with pytest.raises(ImgclfError, match=fragment):
        ServeLimits(**limits)
    assert ServeLimits().max_megapixels == 16.0
