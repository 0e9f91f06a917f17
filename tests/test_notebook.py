import os

import nbformat
from conftest import REPOSITORY
from nbclient import NotebookClient


class ArrivalClient(NotebookClient):
    """Notes, as each piece of printed output arrives, whether `marker` (a file) exists yet."""

    def __init__(self, notebook, marker, **keywords):
        super().__init__(notebook, **keywords)
        self.marker = marker
        self.arrivals = []

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            self.arrivals.append((msg["content"]["text"], self.marker.exists()))
        return super().output(outs, msg, display_id, cell_index)


def test_colab_notebook_runs_top_to_bottom_headless(tmp_path, npz_path, monkeypatch):
    settings = {
        "WEIGHTS_DIR": str(tmp_path / "run"),
        "DATA": npz_path,
        "WIDTH": "8",
        "BATCH_SIZE": "4",
        "MAX_STEPS": "2",
        "SAMPLING_STEPS": "4",
        "TRACK_KID": "0",  # tracking is tested in test_tracking.py; here it would download
    }
    for name, value in settings.items():
        monkeypatch.setenv("TF_DIFFUSION_NOTEBOOK_" + name, value)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(os.path.join(REPOSITORY, "notebooks", "colab.ipynb"), as_version=4)
    # Written once training has finished: the save at its last step.
    final_checkpoint = tmp_path / "run" / "ckpt-2.index"
    client = ArrivalClient(
        notebook,
        final_checkpoint,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPOSITORY, "notebooks")}},
    )
    client.execute()
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    text = "".join(output.get("text", "") for output in outputs)
    assert "Starting a new 'default' run" in text and "step 2/2" in text
    assert "samples-step-0000002.png" in text
    # TensorBoard is opened before training starts.
    assert text.index("tensorboard --logdir") < text.index("Starting a new 'default' run")
    # The training output is streamed: its first line reached the notebook while training
    # was still running, before the final checkpoint was written.
    arrived_early = [done for piece, done in client.arrivals if "Starting a new" in piece]
    assert arrived_early == [False], client.arrivals
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # the round grid, the predicted grid and the strip
    assert final_checkpoint.exists()
