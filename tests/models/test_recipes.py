import subprocess
import sys

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
