import os

import nbformat
from conftest import REPOSITORY
from nbclient import NotebookClient


def test_colab_notebook_runs_top_to_bottom_headless(tmp_path, npz_path, monkeypatch):
    settings = {
        "WEIGHTS_DIR": str(tmp_path / "run"),
        "DATA": npz_path,
        "WIDTH": "8",
        "BATCH_SIZE": "4",
        "MAX_STEPS": "2",
        "SAMPLING_STEPS": "4",
    }
    for name, value in settings.items():
        monkeypatch.setenv("TF_DIFFUSION_NOTEBOOK_" + name, value)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(os.path.join(REPOSITORY, "notebooks", "colab.ipynb"), as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPOSITORY, "notebooks")}},
    ).execute()
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    text = "".join(output.get("text", "") for output in outputs)
    assert "Starting a new 'default' run" in text and "step 2/2" in text
    assert "samples-step-0000002.png" in text
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # the round grid, the predicted grid and the strip
    assert (tmp_path / "run" / "ckpt-2.index").exists()
