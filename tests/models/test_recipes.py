import subprocess
import sys

import pytest

from imgclf.models.recipes import RECIPE_DEFAULTS

from conftest import run_cli


def test_every_registered_recipe_has_defaults_and_every_row_a_recipe():
    from imgclf.models.registry import RECIPES

    assert sorted(RECIPES) == sorted(RECIPE_DEFAULTS)


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
    from imgclf.models.recipes import FAST_BATCH_SIZE, MIN_BATCH, RECIPE_DEFAULTS, fitted_batch_size

    fast, seed = RECIPE_DEFAULTS["fast"], RECIPE_DEFAULTS["seed"]
    assert fitted_batch_size(fast, 40_000) == FAST_BATCH_SIZE  # CIFAR-10 keeps the tuned recipe
    assert fitted_batch_size(fast, 8_000) == 400  # 20 steps an epoch
    assert fitted_batch_size(fast, 360) == MIN_BATCH
    assert fitted_batch_size(fast, 20) == 20  # never more than the training set
    assert fitted_batch_size(seed, 360) == seed.batch_size
    small = TrainConfig(model="fast").resolved(360)
    assert small.batch_size == MIN_BATCH
    assert small.learning_rate == pytest.approx(fast.learning_rate * MIN_BATCH / FAST_BATCH_SIZE)
    assert TrainConfig(model="fast", batch_size=500).resolved(360).batch_size == 500  # asked for: kept


def test_runs_far_outside_the_tuning_are_named():
    from imgclf.models.recipes import RECIPE_DEFAULTS, outside_tuning

    assert outside_tuning(RECIPE_DEFAULTS["fast"], 40_000, 32) == []
    notes = outside_tuning(RECIPE_DEFAULTS["fast"], 360, 96)
    assert notes == ["360 training images (tuned on 10,000-50,000)", "96-pixel images (tuned on 32-32)"]
    assert outside_tuning(RECIPE_DEFAULTS["seed"], 360, 96) == []
