import subprocess
import sys

import pytest

from imgclf.models.recipes import RECIPE_DEFAULTS

from conftest import run_cli, run_main


def test_the_defaults_table_loads_without_keras():
    code = ("import sys; from imgclf.models.recipes import RECIPE_DEFAULTS; import imgclf.cli; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_help_shows_each_recipes_defaults_from_the_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal width, breaking "fast-small"
    result = run_cli("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name, defaults in RECIPE_DEFAULTS.items():
        assert f"{name}: {defaults.epochs}" in text and f"{name}: {defaults.batch_size}" in text


def test_fast_batches_fit_small_training_sets():
    from imgclf.config import TrainConfig
    from imgclf.models.recipes import FAST_BATCH_SIZE, MIN_BATCH, RECIPE_DEFAULTS, fitted_batch_size, resolve

    fast, seed = RECIPE_DEFAULTS["fast"], RECIPE_DEFAULTS["seed"]
    assert fitted_batch_size(fast, 40_000) == FAST_BATCH_SIZE  # CIFAR-10 keeps the tuned recipe
    assert fitted_batch_size(fast, 8_000) == 400  # 20 steps an epoch
    assert fitted_batch_size(fast, 360) == MIN_BATCH
    assert fitted_batch_size(fast, 20) == 20  # never more than the training set
    assert fitted_batch_size(seed, 360) == seed.batch_size
    small = resolve(TrainConfig(model="fast"), 360)
    assert small.batch_size == MIN_BATCH
    assert small.learning_rate == pytest.approx(fast.learning_rate * MIN_BATCH / FAST_BATCH_SIZE)
    assert resolve(TrainConfig(model="fast", batch_size=500), 360).batch_size == 500  # asked for: kept


def test_runs_far_outside_the_tuning_are_named():
    from imgclf.models.recipes import RECIPE_DEFAULTS, outside_tuning

    assert outside_tuning(RECIPE_DEFAULTS["fast"], 40_000, 32) == []
    notes = outside_tuning(RECIPE_DEFAULTS["fast"], 360, 96)
    assert notes == ["360 training images (tuned on 10,000-50,000)", "96-pixel images (tuned on 32-32)"]
    assert outside_tuning(RECIPE_DEFAULTS["seed"], 360, 96) == []


def test_defaults_follow_the_original_description():
    from imgclf.config import TrainConfig
    from imgclf.models.recipes import resolve

    config = resolve(TrainConfig())
    assert (config.model, config.epochs, config.val_split, config.image_size) == ("seed", 50, 0.2, 32)
    assert (config.batch_size, config.learning_rate) == (32, 1e-3)


def test_recipe_defaults_fill_only_what_is_not_given():
    from imgclf.config import TrainConfig
    from imgclf.models.recipes import resolve

    config = resolve(TrainConfig(model="fast", epochs=3))
    assert config.epochs == 3 and config.batch_size == 1000
    half = resolve(TrainConfig(model="fast", batch_size=500))  # fast: learning rate scales with the batch
    assert half.learning_rate == pytest.approx(config.learning_rate / 2)


@pytest.mark.parametrize("name", ["seed", "fast", "fast-large"])
def test_the_weight_average_is_the_recipes_unless_given_and_0_turns_it_off(name, tmp_path):
    from imgclf.config import TrainConfig
    from imgclf.models.recipes import resolve

    assert resolve(TrainConfig(model=name)).ema == RECIPE_DEFAULTS[name].ema
    assert resolve(TrainConfig(model=name, ema=0.0)).ema == 0.0
    assert resolve(TrainConfig(model=name, ema=0.9)).ema == 0.9
    result = run_main("train", "--model", name, "--ema", "-0.1", "--data-dir", str(tmp_path))
    assert result.returncode != 0 and "ema must be a decay from 0 (none)" in result.stderr


def test_a_run_folder_from_before_the_recipes_ema_default_resumes_without_one(tmp_path, monkeypatch):
    """Its config.json is resolved, and "ema": null then meant no average."""
    import json

    from imgclf.config import TrainConfig
    from imgclf.training import loop

    run = tmp_path / "old"
    run.mkdir()
    written = TrainConfig(model="fast-large", epochs=3).to_dict()
    assert "ema" in written and written["ema"] is None
    (run / "config.json").write_text(json.dumps(written))
    seen = []
    monkeypatch.setattr(loop, "_run", lambda config, *args, **kwargs: seen.append(config))
    loop.resume(run)
    assert seen[0].ema == 0.0 and seen[0].model == "fast-large"


def test_backbone_options_belong_to_backbones():
    from imgclf.config import TrainConfig
    from imgclf.errors import ImgclfError
    from imgclf.models.recipes import check

    with pytest.raises(ImgclfError, match="weights is for the pretrained backbones, not the seed recipe"):
        check(TrainConfig.from_dict({"model": "seed", "weights": "imagenet"}))
    with pytest.raises(ImgclfError, match="at least 32x32 pixels"):
        check(TrainConfig.from_dict({"model": "mobilenetv3small", "image_size": 24}))
    with pytest.raises(ImgclfError, match="freeze_epochs needs a model to fine-tune"):
        check(TrainConfig.from_dict({"model": "fast", "freeze_epochs": 2}))
    with pytest.raises(ImgclfError, match="^epochs must be at least 1 .*; unknown model 'nope' .available: auto, "):
        check(TrainConfig(model="nope", epochs=0))  # both in one line
    check(TrainConfig.from_dict({"model": "auto", "weights": "none"}))  # auto may pick a backbone


def test_backbone_defaults_fine_tune_only_from_pretrained_weights():
    from imgclf.config import TrainConfig
    from imgclf.models.recipes import resolve

    pretrained = resolve(TrainConfig(model="efficientnetv2b0", image_size=96), 1000)
    assert (pretrained.weights, pretrained.freeze_epochs, pretrained.backbone_lr) == ("imagenet", 3, 0.1)
    scratch = resolve(TrainConfig(model="efficientnetv2b0", image_size=96, weights="none"), 1000)
    assert (scratch.freeze_epochs, scratch.backbone_lr) == (0, 1.0)
    assert resolve(TrainConfig(model="fast"), 1000).weights is None


def test_the_recipe_a_saved_model_names_is_read_from_new_and_old_files():
    from imgclf.models.recipes import saved_recipe

    assert saved_recipe({"recipe": "fast"}) == "fast" and saved_recipe({"model_name": "seed"}) == "seed"
    assert saved_recipe({}) is None
