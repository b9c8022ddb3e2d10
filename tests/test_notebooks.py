"""Both notebooks run top to bottom on a tiny dataset (their parameters cell replaced)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, make_image_folder

pytestmark = pytest.mark.slow


def run_notebook(name: str, parameters: str, cwd: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = parameters
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def outputs(notebook, output_type):
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == output_type]


def test_train_then_predict_notebooks(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    trained = run_notebook(
        "train_model.ipynb",
        f"CONFIG = dict(data_dir={str(data)!r}, epochs=1, image_size=16, out={str(run)!r}, verbose=0)",
        tmp_path,
    )
    assert (run / "best_model.keras").is_file()
    images = [o for o in outputs(trained, "display_data") if "image/png" in o.data]
    assert len(images) == 5  # the five plots, inline
    predicted = run_notebook(
        "predict_model.ipynb",
        f"MODEL = {str(run / 'best_model.keras')!r}\nIMAGES = [{str(data / 'red')!r}]\nTOP_K = 2\nSHOW = 3",
        tmp_path,
    )
    text = "".join(o.get("text", "") for o in outputs(predicted, "stream"))
    assert "8 images, 0 skipped" in text
    assert any("image/png" in o.data for o in outputs(predicted, "display_data"))
