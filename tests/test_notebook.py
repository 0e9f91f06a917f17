"""notebooks/colab.ipynb, run as Colab runs it, headless.

The Colab branch runs on a stand-in `google.colab` (tests/colab_stub): its `drive.mount` links a
temporary "Google Drive" folder to the mount point, `files.download` records the path, and the
folder's sitecustomize.py makes `socket.gethostname()` return TF_DIFFUSION_TEST_HOSTNAME in the
kernel and in the train.py it starts, so that each kernel is another Colab VM to the run's lock.
Each "VM" has its own /content (in tmp_path) with the checkout already there (a link to this
repository) and TF_DIFFUSION_NOTEBOOK_INSTALL=0, so nothing is cloned or pip-installed.
"""

import ast
import asyncio
import contextlib
import dataclasses
import glob
import io
import json
import os
import re
import signal
import sys
import time

import nbformat
import pytest
from conftest import REPOSITORY
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from tf_diffusion.cli import SCRIPT_FLAGS, flag, train_parser
from tf_diffusion.config import Config

NOTEBOOK = os.path.join(REPOSITORY, "notebooks", "colab.ipynb")
STUB = os.path.join(REPOSITORY, "tests", "colab_stub")
PREFIX = "TF_DIFFUSION_NOTEBOOK_"
# The train.py settings the notebook may pass, each for the reason its comment gives.
NAMED_SETTINGS = {"weights_dir", "label", "max_minutes", "save_every_minutes", "track_kid"}


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def tagged(notebook, tag):
    """The index and the cell tagged `tag`."""
    (found,) = [
        (index, cell)
        for index, cell in enumerate(notebook.cells)
        if tag in cell.metadata.get("tags", [])
    ]
    return found


def cell_text(cell):
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def run_cells(notebook, tags, namespace):
    """Run the cells tagged `tags` in this process, in `namespace`; return what they printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for tag in tags:
            exec(compile(tagged(notebook, tag)[1].source, tag, "exec"), namespace)
    return printed.getvalue()


@pytest.fixture
def no_notebook_settings(monkeypatch):
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)


def test_notebook_passes_train_py_only_the_settings_it_names(tmp_path, no_notebook_settings):
    """Batch, width, learning rate, precision, XLA, steps... are train.py's and the run's."""
    notebook = read_notebook()
    source = tagged(notebook, "settings")[1].source
    namespace = {}
    run_cells(notebook, ["settings"], namespace)
    assert namespace["REPOSITORY_URL"] == "https://github.com/OWNER/tf-diffusion"
    namespace["WEIGHTS_DIR"] = str(tmp_path / "run")
    new_run = namespace["train_command"]()
    assert new_run[0] == "train.py"
    arguments = vars(train_parser("").parse_args(new_run[1:]))
    defaults = vars(train_parser("").parse_args([]))
    given = {name for name, value in arguments.items() if value != defaults[name]}
    config_names = {field.name for field in dataclasses.fields(Config)}
    assert given <= NAMED_SETTINGS, given - NAMED_SETTINGS
    assert given <= config_names | set(SCRIPT_FLAGS)
    assert arguments["max_minutes"] == 170 and arguments["save_every_minutes"] == 5
    assert arguments["track_kid"] is None  # off: train.py's default (0)
    # Each one passed has its reason: a comment on its line or on the line above.
    lines = source.splitlines()
    for name in NAMED_SETTINGS:
        for number in [n for n, line in enumerate(lines) if f'"{flag(name)}"' in line]:
            assert "#" in lines[number] or lines[number - 1].lstrip().startswith("#"), name
    # The settings that define a run's checkpoint are never set (a resumed run keeps its own).
    tree = ast.parse(source)
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert not {flag(name) for name in config_names - NAMED_SETTINGS} & strings
    # A folder that holds a run already keeps its own class (a run copied from a laptop).
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    resumed = vars(train_parser("").parse_args(namespace["train_command"]()[1:]))
    assert resumed["label"] is None and resumed["weights_dir"] == str(tmp_path / "run")


def test_notebook_cells_with_nothing_to_show_say_so(tmp_path, monkeypatch, no_notebook_settings):
    notebook = read_notebook()
    # On Colab, with no checkout and the placeholder address: one message naming what to set.
    monkeypatch.syspath_prepend(STUB)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv(PREFIX + "CHECKOUT", str(tmp_path / "content" / "tf-diffusion"))
    monkeypatch.setenv(PREFIX + "DRIVE", str(tmp_path / "content" / "drive"))
    namespace = {}
    with pytest.raises(ValueError, match="set REPOSITORY_URL in the first code cell to your copy"):
        run_cells(notebook, ["settings", "setup"], namespace)
    assert namespace["IN_COLAB"] and not (tmp_path / "content").exists()
    monkeypatch.delitem(sys.modules, "google.colab")
    # An empty run folder: no grid, no checkpoint, nothing to export or download yet.
    namespace = {"WEIGHTS_DIR": str(tmp_path / "run"), "IN_COLAB": False, "run": None}
    exec("import os, re, shlex, sys", namespace)
    printed = run_cells(notebook, ["grid", "samples", "export", "download"], namespace)
    assert "no sample grid yet: training writes one" in printed
    assert "no checkpoint yet: run the training cell first" in printed
    assert "nothing to export yet" in printed and "nothing to download yet" in printed


def vm(tmp_path, name, extra_flags):
    """The environment of a kernel on a new Colab VM `name`: its own /content, the shared
    Drive, the stand-in google.colab and hostname."""
    content = tmp_path / name / "content"
    content.mkdir(parents=True)
    os.symlink(REPOSITORY, content / "tf-diffusion")  # the clone, already there
    environment = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    environment.update(
        PYTHONPATH=os.pathsep.join(filter(None, [STUB, os.environ.get("PYTHONPATH")])),
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_DIFFUSION_TEST_HOSTNAME=name,
        TF_DIFFUSION_TEST_DRIVE=str(tmp_path / "drive"),
        TF_DIFFUSION_TEST_DOWNLOADS=str(tmp_path / "downloads.txt"),
    )
    notebook_settings = dict(
        DRIVE=str(content / "drive"),
        CHECKOUT=str(content / "tf-diffusion"),
        INSTALL="0",  # the checkout's requirements are installed already
        TENSORBOARD="0",  # no TensorBoard server in a test
        EXTRA_FLAGS=extra_flags,
    )
    environment.update({PREFIX + key: value for key, value in notebook_settings.items()})
    client = NotebookClient(
        read_notebook(),
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(content)}},  # the kernel starts in /content
    )
    return client, environment


def process_command(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().replace(b"\0", b" ").decode()


def test_colab_notebook_survives_a_disconnect_and_refuses_a_second_notebook(tmp_path, npz_path):
    """VM 1 trains until its first save, then vanishes (its kernel and train.py are killed);
    meanwhile VM 2's notebook on the same Drive folder is refused; VM 3 resumes the run."""
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    run = tmp_path / "drive" / "MyDrive" / "tf-diffusion" / "cars"  # the notebook's default
    tiny = (
        f"--data {npz_path} --width 8 --batch-size 4 --timesteps 20 --sampling-steps 4 "
        "--warmup-steps 0 --precision float32 --save-every 1"
    )
    arrivals = []  # VM 1's printed output as it arrived, and whether a checkpoint existed then

    async def vanishing_vm():
        client, environment = vm(tmp_path, "colab-vm-1", tiny + " --max-steps 100000")
        train_index, train_cell = tagged(client.nb, "train")
        record = client.output

        def output(outs, msg, display_id, cell_index):
            if msg["msg_type"] == "stream":
                arrivals.append((msg["content"]["text"], bool(glob.glob(f"{run}/ckpt-*.index"))))
            return record(outs, msg, display_id, cell_index)

        client.output = output
        async with client.async_setup_kernel(env=environment):
            for index, cell in enumerate(client.nb.cells[:train_index]):
                await client.async_execute_cell(cell, index)
            training = asyncio.ensure_future(client.async_execute_cell(train_cell, train_index))
            deadline = time.monotonic() + 180
            while not glob.glob(f"{run}/ckpt-*.index") and time.monotonic() < deadline:
                assert not training.done(), cell_text(train_cell)
                await asyncio.sleep(0.2)
            assert not training.done(), cell_text(train_cell)
            await second_notebook()  # while VM 1 still trains
            assert not training.done(), cell_text(train_cell)
            # The VM vanishes: train.py (frozen first, so it cannot notice) and the kernel.
            holder = json.loads((run / "train.lock").read_text())
            assert holder["host"] == "colab-vm-1" and "train.py" in process_command(holder["pid"])
            os.kill(holder["pid"], signal.SIGSTOP)
            os.kill(client.km.provisioner.pid, signal.SIGKILL)
            os.kill(holder["pid"], signal.SIGKILL)
            with pytest.raises(DeadKernelError):
                await training
        return train_cell

    async def second_notebook():
        client, environment = vm(tmp_path, "colab-vm-2", tiny + " --max-steps 100000")
        with pytest.raises(CellExecutionError) as refusal:
            await client.async_execute(env=environment)
        _, train_cell = tagged(client.nb, "train")
        errors = [line for line in cell_text(train_cell).splitlines() if "error:" in line]
        assert len(errors) == 1 and "in use by another training run" in errors[0], errors
        assert errors[0].startswith(f"error: --weights-dir {tmp_path}/colab-vm-2/content/drive")
        assert "RuntimeError" in str(refusal.value) and errors[0] in str(refusal.value)
        assert not tagged(client.nb, "grid")[1].outputs  # the notebook stopped there

    first_train_cell = asyncio.run(vanishing_vm())
    printed = cell_text(first_train_cell)
    assert "Starting a new 'default' run" in printed
    assert " --label automobile " in printed.splitlines()[0]  # the command, for a new run
    # Streamed: the first line reached the notebook before any checkpoint was written.
    assert [done for text, done in arrivals if "Starting a new" in text] == [False], arrivals
    lock = json.loads((run / "train.lock").read_text())  # left by the vanished VM
    saved = max(int(re.findall(r"\d+", path)[-1]) for path in glob.glob(f"{run}/ckpt-*.index"))
    assert saved >= 1
    lock["heartbeat"] -= 90  # as it is a minute and more after a VM vanishes
    (run / "train.lock").write_text(json.dumps(lock))

    # VM 3: "run all" again, unchanged but for where this session ends.
    client, environment = vm(tmp_path, "colab-vm-3", tiny + f" --max-steps {saved + 2}")
    client.execute(env=environment)
    cells = {tag: cell_text(tagged(client.nb, tag)[1]) for tag in ("setup", "train", "grid")}
    assert "Mounted at" in cells["setup"] and "reusing" in cells["setup"]
    resumed = re.search(r"Resuming from step (\d+)", cells["train"])
    assert resumed and int(resumed[1]) >= 1, cells["train"]
    assert "--label" not in cells["train"].splitlines()[0]  # the run keeps its own
    assert cells["train"].count("warning:") == 1
    assert "took over the lock of PID" in cells["train"] and "colab-vm-1" in cells["train"]
    assert "in use by another training run" not in cells["train"]
    assert f"Done: step {saved + 2} saved" in cells["train"]
    assert "samples-step-" in cells["grid"]
    # The pictures and the export are on Drive, beside the run; the zip was downloaded.
    step = saved + 2
    for name in (f"step-{step}.png", f"step-{step}_steps.png", f"step-{step}.gif"):
        assert (run / "outputs" / name).exists(), name
    export = run / f"export-step-{step}"
    assert (export / "generator").is_dir() and (export / "unet.keras").exists()
    downloads = (tmp_path / "downloads.txt").read_text().split()
    assert [os.path.basename(path) for path in downloads] == [f"export-step-{step}.zip"]
    images = [
        output
        for cell in client.nb.cells
        for output in cell.get("outputs", [])
        if {"image/png", "image/gif"} & set(output.get("data", {}))
    ]
    assert len(images) == 4  # the round grid, the sampled grid, the strip and the GIF
    assert not os.path.exists(run / "train.lock")  # released at the end
