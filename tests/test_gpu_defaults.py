"""What a GPU run chooses (precision by compute capability; batch, rate and XLA of a new default
run), with the GPU faked, and bench/speed.py --gpu: its refusal on a CPU and its code path."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPOSITORY, synthetic_images, tiny_config, tiny_settings

from tf_diffusion import commands, hardware
from tf_diffusion.hardware import GPU_DEFAULTS, auto_precision, device_defaults
from tf_diffusion.trainer import Trainer

T4 = ("Tesla T4", (7, 5))
SPEED = os.path.join(REPOSITORY, "bench", "speed.py")


@pytest.mark.parametrize(
    "gpus, cpu_bfloat16, expected",
    [
        ([("NVIDIA A100-SXM4-40GB", (8, 0))], False, "mixed_bfloat16"),
        ([("NVIDIA L4", (8, 9))], False, "mixed_bfloat16"),
        ([T4], False, "mixed_float16"),
        ([("Tesla V100", (7, 0))], True, "mixed_float16"),  # the GPU decides, not the CPU
        ([("Tesla P100", (6, 1))], True, "float32"),
        ([("NVIDIA A100", (8, 0)), T4], False, "mixed_float16"),  # the oldest of several
        ([("a GPU TensorFlow cannot describe", None)], False, "float32"),
        ([], True, "mixed_bfloat16"),
        ([], False, "float32"),
    ],
)
def test_auto_precision_follows_the_gpu_generation_or_the_cpu(gpus, cpu_bfloat16, expected):
    assert auto_precision(gpus, cpu_bfloat16) == expected


def test_a_faked_t4_trains_auto_in_float16_with_loss_scaling(monkeypatch):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: [T4])
    monkeypatch.setattr(hardware, "cpu_has_bfloat16", lambda: True)  # ignored beside a GPU
    assert hardware.training_precision("auto") == "mixed_float16"
    assert hardware.training_precision("float32") == "float32"  # a choice is kept
    trainer = Trainer(tiny_config(precision="auto"))
    assert trainer.precision == "mixed_float16"
    assert isinstance(trainer.optimizer, tf.keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize(
    "gpus, cpu_bfloat16, expected",
    [([], True, "mixed_bfloat16"), ([], False, "float32"), ([T4], True, "float32")],
)
def test_sampling_auto_is_bfloat16_only_where_training_auto_is(
    monkeypatch, gpus, cpu_bfloat16, expected
):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(hardware, "cpu_has_bfloat16", lambda: cpu_bfloat16)
    assert hardware.sampling_policy("auto") == expected
    assert hardware.sampling_policy("float32") == "float32"  # a choice is kept


def test_device_defaults_change_only_the_default_recipe_on_a_gpu():
    assert device_defaults("default", [T4]) == {
        "batch_size": 128,
        "learning_rate": 3e-3,
        "xla": True,
    }
    assert device_defaults("default", [T4]) == GPU_DEFAULTS
    assert device_defaults("default", []) == {}  # a CPU keeps the CPU-tuned defaults
    assert device_defaults("v1", [T4]) == device_defaults("classic", [T4]) == {}  # controls
    # Across 3 GPUs the batch splits evenly, and XLA stays off under tf.distribute.
    mirrored = device_defaults("default", [T4] * 3, "mirrored")
    assert mirrored["batch_size"] == 129 and mirrored["xla"] is False
    assert device_defaults("default", [T4] * 2, "mirrored")["batch_size"] == 128


@pytest.fixture
def gpu_npz(tmp_path):
    """Enough images for the GPU batch of 128."""
    path = tmp_path / "images.npz"
    np.savez(path, x=synthetic_images(GPU_DEFAULTS["batch_size"]))
    return str(path)


def save_instead_of_training(trainer, store, config, *rest, **keywords):
    """`commands.train_to` that saves at once: what is tested is the config a run saves."""
    store.save(trainer.step, config)
    return trainer.step


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(commands, "train_to", save_instead_of_training)


def saved_config(folder):
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
        return json.load(file)


def untuned_settings(data, **changes):
    """The tiny run's settings without the batch, the rate and XLA, as if left out."""
    settings = tiny_settings(**{"data": data, "max_steps": 1, **changes})
    for name in ("batch_size", "learning_rate", "xla"):
        settings.setdefault(name, None)
    return settings


def test_a_new_run_on_a_faked_gpu_records_the_gpu_choices(
    tmp_path, gpu_npz, monkeypatch, capsys, no_training
):
    monkeypatch.setattr(commands, "visible_gpus", lambda: [T4])
    run = str(tmp_path / "run")
    commands.train(run, None, untuned_settings(gpu_npz, batch_size=None), quiet=True)
    saved = saved_config(run)
    assert (saved["batch_size"], saved["learning_rate"], saved["xla"]) == (128, 3e-3, True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "not measured" in line]
    assert len(lines) == 1, lines
    assert "Tesla T4 (compute capability 7.5)" in lines[0]
    assert "batch 128, learning rate 0.003, XLA on" in lines[0]


def test_explicit_flags_win_over_the_gpu_choices(
    tmp_path, gpu_npz, monkeypatch, capsys, no_training
):
    monkeypatch.setattr(commands, "visible_gpus", lambda: [T4])
    run = str(tmp_path / "run")
    commands.train(run, None, untuned_settings(gpu_npz, batch_size=4, xla=False), quiet=True)
    saved = saved_config(run)
    assert (saved["batch_size"], saved["learning_rate"], saved["xla"]) == (4, 3e-3, False)
    out = capsys.readouterr().out
    assert "takes learning rate 0.003: chosen from the literature, not measured" in out
    # v1 and the classic recipe are controls: a GPU changes nothing in them.
    v1 = str(tmp_path / "v1")
    settings = untuned_settings(gpu_npz, batch_size=None, sampling_steps=None, timesteps=None)
    commands.train(v1, "v1", settings, quiet=True)
    saved = saved_config(v1)
    assert (saved["batch_size"], saved["learning_rate"], saved["xla"]) == (64, 1e-3, False)
    assert "not measured" not in capsys.readouterr().out


def test_a_run_started_on_a_cpu_keeps_its_batch_when_it_resumes_on_a_gpu(
    tmp_path, gpu_npz, monkeypatch, capsys, no_training
):
    run = str(tmp_path / "run")
    monkeypatch.setattr(commands, "visible_gpus", lambda: [])
    commands.train(run, None, untuned_settings(gpu_npz, batch_size=None), quiet=True)
    assert saved_config(run)["batch_size"] == 8
    monkeypatch.setattr(commands, "visible_gpus", lambda: [T4])
    settings = untuned_settings(gpu_npz, batch_size=None, max_steps=2)
    commands.train(run, None, settings, quiet=True)
    saved = saved_config(run)
    assert (saved["batch_size"], saved["learning_rate"], saved["xla"]) == (8, 2e-3, False)
    assert saved["max_steps"] == 2  # while a setting given on resuming is taken
    out = capsys.readouterr().out
    assert "Resuming from step 0" in out and "not measured" not in out


def test_speed_gpu_refuses_in_one_line_without_a_gpu():
    result = subprocess.run(
        [sys.executable, SPEED, "--gpu"],
        capture_output=True,
        text=True,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1"),  # no GPU, even on a GPU machine
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    expected = (
        "error: --gpu: no GPU is visible to TensorFlow; run this on a GPU machine such as Colab"
    )
    # TensorFlow's C++ start-up log lines ("I0000 00:00:...") may come first; besides them, one.
    native_log = re.compile(r"[IWEF]\d{4} |WARNING: All log messages before absl")
    lines = [line for line in result.stderr.splitlines() if not native_log.match(line)]
    assert lines == [expected], result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


@pytest.fixture
def speed(monkeypatch):
    """bench/speed.py as a module (bench/ is not a package; it imports bench/quality.py)."""
    monkeypatch.syspath_prepend(os.path.join(REPOSITORY, "bench"))
    spec = importlib.util.spec_from_file_location("speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_gpu_cells_measure_every_cell_on_a_cpu(speed):
    # One precision and XLA off: every further cell costs a trace, seconds on a CPU (the
    # other precisions and XLA go through the same lines, with other flags).
    rows, sampling, peak = speed.gpu_cells(
        tf,
        "/CPU:0",
        [2, 4],
        ["float32"],
        2,
        4,
        synthetic_images(8),
        width=8,
        xla_options=[False],
        peak_size=128,
    )
    cells = [(row["batch_size"], row["precision"], row["xla"]) for row in rows]
    assert cells == [(2, "float32", False), (4, "float32", False)]
    assert all("failed" not in row for row in rows), rows
    assert all(row["images_per_second"] > 0 and row["gflops"] > 0 for row in rows)
    assert len(sampling) == 2 and min(sampling) > 0 and peak > 0
    table = speed.gpu_table(rows, peak)
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == 8 for line in table)
    assert table[2].startswith("| 2 | float32 | off | ") and " | 1.00 | " in table[2]


def test_speed_gpu_compares_float32_with_the_precision_auto_picks(speed):
    assert speed.gpu_precisions([("NVIDIA A100", (8, 0))]) == ("float32", "mixed_bfloat16")
    assert speed.gpu_precisions([T4]) == ("float32", "mixed_float16")
    assert speed.gpu_precisions([("Tesla P100", (6, 0))]) == ("float32", "mixed_float16")
    failed = {"batch_size": 512, "precision": "float32", "xla": True, "failed": "OOM"}
    first = {"batch_size": 8, "precision": "float32", "xla": False}
    first.update(images_per_second=100.0, gflops=110.0)
    assert speed.gpu_table([first, failed], 1000.0)[3] == "| 512 | float32 | on | OOM | | | |"
