"""Run by test_distribute.py in its own process: TensorFlow's devices are set before it starts.

python tests/distributed_run.py WEIGHTS_DIR DATA.npz   # prints one line of JSON

On 2 logical CPU devices: a single device against 2 mirrored replicas, then one
run folder trained on 2 replicas, then 1, then 2 again.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def split_cpu(count=2):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def train_steps(strategy, steps=3):
    from conftest import synthetic_images, tiny_settings

    from tf_diffusion.config import Config
    from tf_diffusion.data import make_dataset
    from tf_diffusion.trainer import Trainer

    config = Config.for_recipe("default", **tiny_settings(batch_size=8, learning_rate=3e-3))
    trainer = Trainer(config, strategy)
    dataset = make_dataset(synthetic_images(32), config.batch_size, config.timesteps, config.seed)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    batch = next(iter(dataset))  # one batch, again and again: its loss must fall
    losses = [float(trainer.train_one(*batch)) for _ in range(steps)]
    weights = [np.asarray(weight.numpy()) for weight in trainer.model.weights]
    averages = [np.asarray(weight.numpy()) for weight in trainer.ema_model.weights]
    return losses, weights, averages, strategy.num_replicas_in_sync


def compare_mirrored():
    single = train_steps(tf.distribute.get_strategy())
    mirrored = train_steps(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    weight_difference = max(float(np.abs(a - b).max()) for a, b in zip(single[1], mirrored[1]))
    average_difference = max(float(np.abs(a - b).max()) for a, b in zip(single[2], mirrored[2]))
    moved = max(float(np.abs(a).max()) for a in single[1])
    return {
        "replicas": [single[3], mirrored[3]],
        "losses": [single[0], mirrored[0]],
        "weight_difference": weight_difference,
        "ema_difference": average_difference,
        "largest_weight": moved,
    }


def portable(weights_dir, data):
    """2 replicas, then 1, then 2 again, in one folder; the steps reached."""
    from conftest import tiny_settings

    from tf_diffusion import commands

    settings = tiny_settings(batch_size=8, data=data)
    reached = []
    for distribute, max_steps in (("mirrored", 2), ("none", 3), ("mirrored", 4)):
        reached.append(
            commands.train(
                weights_dir,
                None,
                dict(settings, distribute=distribute, max_steps=max_steps),
                quiet=True,
            )
        )
    return {"reached": reached}


if __name__ == "__main__":
    split_cpu(2)
    print(json.dumps({**compare_mirrored(), **portable(*sys.argv[1:3])}))
