import glob
import os

import tensorflow as tf


def test_training_writes_scalars_and_sample_images_for_tensorboard(tracked_run):
    """The session's tiny run: 4 steps, a round end at steps 2 and 4."""
    event_files = glob.glob(os.path.join(tracked_run, "logs", "events.out.tfevents.*"))
    assert event_files
    scalars, images = {}, {}
    for path in event_files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    scalars.setdefault(value.tag, []).append(event.step)
                elif plugin == "images":
                    images.setdefault(value.tag, []).append(event.step)
    assert scalars["loss"] == [1, 2, 3, 4]
    assert set(scalars) >= {"loss", "learning_rate", "images_per_second"}
    assert images["samples"] == [2, 4]  # a grid at the end of each round
