"""The package's import-time behaviour: light, and no global state changed."""

import subprocess
import sys

import pytest

CHECK_IMPORTS = """
import matplotlib, pkgutil, importlib, os, sys
from PIL import Image, ImageFile
matplotlib.use("svg")  # a backend a user might have chosen
def state():
    return (matplotlib.get_backend(), Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, dict(os.environ))
first = state()
import imgclf
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "importing imgclf loaded TensorFlow"
assert state() == first, (first, state())
import keras, tensorflow  # their own imports set variables (TF2_BEHAVIOR, KMP_*...): what is checked is imgclf's
before = state()
import imgclf.evaluation.plots
for module in pkgutil.walk_packages(imgclf.__path__, "imgclf."):
    importlib.import_module(module.name)  # every module of the package
after = state()
assert before == after, (before, after)
assert callable(imgclf.train)  # the lazy attributes resolve
"""


@pytest.mark.slow  # a new Python process
def test_importing_imgclf_loads_no_tensorflow_and_leaves_matplotlib_pillow_and_the_environment_alone():
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_public_api_resolves():
    import imgclf

    for name in imgclf.__all__:
        assert getattr(imgclf, name) is not None, name


def _imports_of_each_module() -> dict[str, set[str]]:
    """imgclf module -> the imgclf modules it imports (at the top or inside functions)."""
    import ast
    from pathlib import Path

    import imgclf

    root = Path(imgclf.__file__).parent
    files = {".".join(("imgclf", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module) if p)
                found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def test_no_module_imports_itself_through_others():
    graph = _imports_of_each_module()
    assert {"imgclf.models.registry", "imgclf.models.fast", "imgclf.training.loop"} <= set(graph)
    assert "imgclf.models.recipes" in graph["imgclf.models.fast"]  # the walk does see imports

    def reaches(start, target, seen):
        for module in graph[start] - seen:
            if module == target or reaches(module, target, seen | {module}):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, cycles


# The stages from the bottom up: a module may import its own stage and those below it, never
# one above (the data and model code know nothing of training; prediction needs no training
# code; serving needs neither). `imgclf/__init__` and the CLI sit on top of everything.
LAYERS = ["errors", "config", "data", "run", "models", "inference", "evaluation", "training", "export", "serve",
          "bench", "cli"]


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: it imports config and errors, the rest lazily (__getattr__)
        return LAYERS.index("config")
    return LAYERS.index(parts[1])


def test_no_module_imports_a_higher_layer():
    graph = _imports_of_each_module()
    assert {_layer(m) for m in graph} >= set(range(len(LAYERS)))  # every stage is in the walk
    upward = sorted(f"{name} imports {module}" for name, imported in graph.items() for module in imported
                    if _layer(module) > _layer(name))
    assert not upward, upward
    assert graph["imgclf.config"] <= {"imgclf.errors"}, graph["imgclf.config"]
