"""tf.distribute without GPUs: 2 logical CPU devices, and 2 worker processes on loopback."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import REPOSITORY, tiny_flags

HELPER = os.path.join(REPOSITORY, "tests", "distributed_run.py")
ENVIRONMENT = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_helper(*arguments):
    result = subprocess.run(
        [sys.executable, HELPER, *map(str, arguments)],
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def assert_predict_samples_on_one_device(tmp_path):
    """predict.py, in a plain process, loads the run in tmp_path/run and writes 4 images."""
    command = [
        sys.executable,
        os.path.join(REPOSITORY, "predict.py"),
        "--weights-dir",
        tmp_path / "run",
        "--num",
        "4",
        "--npz",
        tmp_path / "s.npz",
        "--out",
        tmp_path / "s.png",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "s.npz")["x"].shape == (4, 32, 32, 3)


def test_mirrored_on_two_logical_cpus_matches_one_device_and_a_run_moves_between_them(
    tmp_path, npz_path
):
    output, report = run_helper(tmp_path / "run", npz_path)
    assert report["replicas"] == [1, 2]
    single, mirrored = report["losses"]
    np.testing.assert_allclose(single, mirrored, rtol=1e-5)
    assert single[-1] < single[0]  # it trained
    assert report["weight_difference"] < 1e-4 * report["largest_weight"]
    assert report["ema_difference"] < 1e-4 * report["largest_weight"]
    # One folder: 2 replicas to step 2, 1 device to 3, 2 replicas again to 4.
    assert report["reached"] == [2, 3, 4]
    assert "Resuming from step 2" in output and "Resuming from step 3" in output


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for item in sockets:
        item.bind(("127.0.0.1", 0))
    ports = [item.getsockname()[1] for item in sockets]
    for item in sockets:
        item.close()
    return ports


def test_two_workers_on_loopback_train_and_predict_loads_the_result(tmp_path, npz_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [
        sys.executable,
        os.path.join(REPOSITORY, "train.py"),
        "--distribute",
        "multi-worker",
        "--data",
        npz_path,
        "--weights-dir",
        tmp_path / "run",
        *tiny_flags(batch_size=8),
        "--max-steps",
        "3",
        "--quiet",
    ]
    processes = []
    try:
        for index in range(2):
            config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=dict(ENVIRONMENT, TF_CONFIG=json.dumps(config)),
                )
            )
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "2 replicas" in outputs[0][0] and "Done: step 3" in outputs[0][0]
    assert outputs[1][0] == ""  # only the chief speaks and writes
    assert (tmp_path / "run" / "ckpt-3.index").exists()
    assert_predict_samples_on_one_device(tmp_path)


def test_a_tpu_strategy_connects_to_the_tpu_first(monkeypatch):
    """`--distribute tpu` (a Colab TPU): resolve, connect, initialise, then the strategy; with
    stand-ins for TensorFlow's TPU calls, as no TPU is here."""
    import tensorflow as tf

    from tf_diffusion.hardware import make_strategy

    calls = []
    monkeypatch.setattr(
        tf.distribute.cluster_resolver, "TPUClusterResolver", lambda: calls.append("resolve")
    )
    monkeypatch.setattr(
        tf.config, "experimental_connect_to_cluster", lambda r: calls.append("connect")
    )
    monkeypatch.setattr(
        tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append("initialise")
    )
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: calls.append("strategy") or "TPU")
    assert make_strategy("tpu") == "TPU"
    assert calls == ["resolve", "connect", "initialise", "strategy"]
