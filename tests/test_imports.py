"""The package's import-time behaviour: light, and no global state changed."""

import subprocess
import sys

CHECK_STATE = """
import matplotlib, pkgutil, importlib
from PIL import Image, ImageFile
matplotlib.use("svg")  # a backend a user might have chosen
before = (matplotlib.get_backend(), Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
import imgclf, imgclf.plots
for module in pkgutil.walk_packages(imgclf.__path__, "imgclf."):
    importlib.import_module(module.name)  # every module of the package
after = (matplotlib.get_backend(), Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
assert before == after, (before, after)
"""


def run(code):
    return subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, timeout=300)


def test_importing_imgclf_leaves_matplotlib_and_pillow_settings_alone():
    result = run(CHECK_STATE)
    assert result.returncode == 0, result.stderr[-3000:]


def test_importing_imgclf_loads_no_tensorflow_until_used():
    result = run("import imgclf\nassert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
                 "assert callable(imgclf.train) and 'keras' in sys.modules")
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_public_api_resolves():
    import imgclf

    for name in imgclf.__all__:
        assert getattr(imgclf, name) is not None, name
