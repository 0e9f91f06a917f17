"""Take a trained run anywhere: the whole sampler as a SavedModel, the U-Net as a `.keras` file.

`export_run(weights_dir, directory)` (`predict.py --export DIR`) writes

* `generator/`: a TensorFlow SavedModel of the whole sampler, written with
  Keras' `ExportArchive`: the sampling U-Net (EMA weights), the noise
  schedule and the denoising loop. It runs the very code of `predict.py`
  (`Sampler.run_steps` with the run's sampler, the stateless noise of
  `sampling.sampling_noises`), and it holds the times that
  `diffusion.sampling_times` gives for every step count, so the same seed and
  steps give the same images. Loading it needs TensorFlow only:

      generator = tf.saved_model.load("DIR/generator")
      images = generator.generate(num=16, seed=0, steps=25)  # uint8, (16, 32, 32, 3)

  `steps` 0 takes the run's default. A model that predicts the next level
  (the classic recipe) must take all its levels: its `steps` must be 0 or
  `timesteps`. The `serving_default` signature, for TF Serving, takes the
  same int32 inputs `num`, `seed` and `steps` and returns `{"images": uint8}`.
* `unet.keras`: the sampling U-Net in Keras' own format. It loads with
  `keras.saving.load_model` in safe mode once `tf_diffusion` is imported
  (which registers its one custom layer, `SinusoidalEmbedding`), from any
  folder once the package is installed (`pip install .`).
* `README.md`: a model card, ready for the Hugging Face Hub.

The folder is written under a temporary name and renamed once complete: an
existing folder is never overwritten, and a failed export leaves no `DIR`.
"""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_diffusion.checkpoint import load_sampling_checkpoint
from tf_diffusion.config import CIFAR10_CLASS_NAMES, IMAGE_CHANNELS, IMAGE_SIZE
from tf_diffusion.diffusion import sampling_times
from tf_diffusion.files import best_run_directory, check_new_folder
from tf_diffusion.legacy import predicts_next
from tf_diffusion.sampling import SAMPLING_BATCH_SIZE, Sampler, sampling_noises
from tf_diffusion.tracking import record_at

# How the model card names the samplers and what the network predicts.
SAMPLER_NAMES = {
    "ddim": "deterministic DDIM",
    "dpm-solver++": "DPM-Solver++(2M)",
    "heun": "EDM's Heun (2 network evaluations a step)",
}
NETWORK_OUTPUTS = {
    "next": "the next level's images",
    "noise": "the noise in them",
    "velocity": "the velocity (signal rate x noise - noise rate x image)",
    "image": "the clean images",
}
GENERATOR_FOLDER = "generator"
KERAS_FILENAME = "unet.keras"
CARD_FILENAME = "README.md"


def time_table(sampler, config):
    """The times of every allowed step count, as a ragged tensor whose row `steps - first` is
    for `steps`; and `first`, the smallest step count allowed.

    A model that predicts the next level takes all its levels, so it has one row.
    """
    first = config.timesteps if predicts_next(config) else 1
    rows = [
        sampling_times(sampler.schedule, steps, config.spacing)
        for steps in range(first, config.timesteps + 1)
    ]
    table = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(rows)), [len(row) for row in rows]
    )
    return table, first


def make_generator(model, config):
    """`(generate, serve)`: the whole sampler of `model` as two `tf.function`s of int32 scalars
    `num`, `seed` and `steps`; `generate` returns the uint8 images, `serve` `{"images": ...}`.
    """
    sampler = Sampler(model, config)
    table, first = time_table(sampler, config)
    timesteps, default_steps = config.timesteps, config.sampling_steps
    signature = [tf.TensorSpec((), tf.int32, name=name) for name in ("num", "seed", "steps")]

    def check(num, steps):
        checks = [tf.debugging.assert_positive(num, message="num must be at least 1")]
        if predicts_next(config):
            checks.append(
                tf.debugging.assert_equal(
                    steps,
                    timesteps,
                    message=f"steps: this model predicts the next level, so it takes all "
                    f"{timesteps} steps; pass 0 or {timesteps}",
                )
            )
        else:
            message = f"steps must be from 1 to {timesteps} (0 takes the default, {default_steps})"
            checks.append(tf.debugging.assert_greater_equal(steps, 1, message=message))
            checks.append(tf.debugging.assert_less_equal(steps, timesteps, message=message))
        return checks

    @tf.function(input_signature=signature)
    def generate(num, seed, steps):
        """`num` uint8 images (num, 32, 32, 3) from the noise of `seed`, in `steps` steps."""
        steps = tf.where(steps == 0, default_steps, steps)
        with tf.control_dependencies(check(num, steps)):
            times = table[steps - first]
        batches = tf.TensorArray(
            tf.uint8,
            size=0,
            dynamic_size=True,
            infer_shape=False,
            element_shape=(None, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS),
        )
        # The same batches as `Sampler.sample`, so the same noise.
        for index in tf.range((num + SAMPLING_BATCH_SIZE - 1) // SAMPLING_BATCH_SIZE):
            start = index * SAMPLING_BATCH_SIZE
            noises = sampling_noises(seed, start, tf.minimum(SAMPLING_BATCH_SIZE, num - start))
            images, _ = sampler.run_steps(noises, times)
            batches = batches.write(index, to_uint8(images))
        return batches.concat()

    @tf.function(input_signature=signature)
    def serve(num, seed, steps):
        return {"images": generate(num, seed, steps)}

    return generate, serve


def to_uint8(images):
    """Images in [-1, 1] to uint8 0..255 inside the graph, rounded as `images.to_uint8` does."""
    scaled = tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0)
    return tf.cast(tf.round(scaled), tf.uint8)


def save_generator(model, config, path):
    """Write the SavedModel sampler of `model` to `path` with Keras' `ExportArchive`."""
    generate, serve = make_generator(model, config)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in (("serving_default", serve), ("generate", generate)):
        function.get_concrete_function()  # traced once, for its signature
        archive.add_endpoint(name, function)
    archive.write_out(path, verbose=False)


def export_run(weights_dir, directory, best=False, say=print, ema=None, **changes):
    """Write the generator, `unet.keras` and the model card of the run in `weights_dir`
    (its best checkpoint with `best`) into the new folder `directory`; return its path.

    `changes` are predict-time settings (`sampling_steps`, `sampler`, `spacing`):
    the generator's defaults, and `sampling_precision`, its policy (float32 if not
    given, not the run's). `ema` picks the weights, as predict.py's --ema.
    """
    source = best_run_directory(weights_dir) if best else weights_dir
    # float32 unless asked: a bfloat16 generator is slow or fails where the hardware lacks it.
    changes["sampling_precision"] = changes.get("sampling_precision") or "float32"
    config, model, step = load_sampling_checkpoint(source, ema, **changes)
    directory = directory.rstrip(os.sep) or directory
    check_new_folder("export", directory)
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f"{name}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # as a plain new folder, not mkdtemp's 0700
    try:
        save_generator(model, config, os.path.join(partial, GENERATOR_FOLDER))
        model.save(os.path.join(partial, KERAS_FILENAME))
        card = model_card(config, model, step, record_at(weights_dir, step), best, ema)
        with open(os.path.join(partial, CARD_FILENAME), "w") as file:
            file.write(card)
        try:
            os.rename(partial, directory)  # replaces an empty folder, never a full one
        except OSError:
            check_new_folder("export", directory)  # written meanwhile: say so
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(
        f"Exported step {step} of {source} ({config.recipe} recipe) to {directory}: "
        f"{GENERATOR_FOLDER}/ (SavedModel), {KERAS_FILENAME}, {CARD_FILENAME}",
        flush=True,
    )
    return directory


def model_card(config, model, step, record=None, best=False, ema=None):
    """The export's README.md: what the model is, how it was trained, and how to use it."""
    class_name = CIFAR10_CLASS_NAMES[config.label]
    if config.data in ("", "tfds"):
        data = f"the CIFAR-10 train split (tensorflow-datasets), class {config.label} only"
    else:
        data = f"`{os.path.basename(config.data.rstrip(os.sep))}` (class {config.label})"
    if predicts_next(config):
        sampler = (
            f"all {config.timesteps} levels; the network predicts the next, less noisy image. "
            f"`steps` must be 0 or {config.timesteps}"
        )
    else:
        sampler = (
            f"{SAMPLER_NAMES[config.sampler]}, {config.sampling_steps} steps over "
            f"{config.spacing}-spaced levels by default (`steps` 0); any `steps` from 1 to "
            f"{config.timesteps}"
        )
    name = config.weights_name(ema)
    decay = next((decay for decay, kept in config.emas.items() if kept == name), None)
    weights = f"EMA of the weights ({decay:g})" if decay else "trained"
    quality = "not measured at this step (train with `--track-kid N` to measure it)"
    if record:
        quality = (
            f"FID {record['fid']:.4g}, KID {record['kid']:.4g}: {record['samples']} samples "
            f"({record['sampler']}, {record['sampling_steps']} steps) against {record['real']} "
            f"training images, on Keras InceptionV3 features ({record['inception_weights']} "
            "weights), measured by "
            "`--track-kid` during training. Compare it with other runs of tf-diffusion, not "
            "with published FIDs (another Inception network, fewer images)"
        )
    network = f"{config.architecture} U-Net, width {config.width}"
    if config.architecture == "residual":
        network += f", {config.block_depth} block{'s' * (config.block_depth > 1)} a resolution"
    objective = f"{config.prediction} prediction, {config.loss} loss"
    if config.loss_weighting != "none":
        objective += f", {config.loss_weighting} weights"
    rows = [
        ("recipe", f"{config.recipe} ({network})"),
        ("training", objective),
        ("parameters", f"{model.count_params():,}"),
        ("class", f"{config.label} ({class_name})"),
        ("steps trained", f"{step:,}" + (" (the checkpoint with the lowest KID)" if best else "")),
        ("images seen", f"{step * config.batch_size:,} ({step:,} steps of {config.batch_size})"),
        ("data", data),
        ("noise levels", f"{config.timesteps}, {config.schedule} schedule"),
        ("sampler", sampler),
        ("weights", weights),
        ("quality", quality),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    steps = 0 if predicts_next(config) else config.sampling_steps
    output = NETWORK_OUTPUTS[config.prediction]
    predict_flags = "" if predicts_next(config) else f" --sampling-steps {steps}"
    if config.sampler != "ddim" or config.spacing != "uniform":
        predict_flags += f" --sampler {config.sampler} --spacing {config.spacing}"
    predict_flags += f" --sampling-precision {config.sampling_precision}"
    return f"""---
pipeline_tag: unconditional-image-generation
tags:
- diffusion
- tensorflow
- keras
- cifar10
---

# tf-diffusion: {class_name}s, {config.recipe} recipe

A small diffusion model that turns gaussian noise into 32x32 pictures of
CIFAR-10 {class_name}s, trained with tf-diffusion (Keras and TensorFlow).

| | |
| --- | --- |
{table}

## Sample

Only TensorFlow is needed:

```python
import tensorflow as tf
generator = tf.saved_model.load("{GENERATOR_FOLDER}")
images = generator.generate(num=16, seed=0, steps={steps}).numpy()  # uint8, (16, 32, 32, 3)
```

The same `seed` and `steps` always give the same images: those that this
command gives from the training run (`steps` 0 takes the default):

```bash
python predict.py --num 16 --seed 0{predict_flags}
```

## Files

* `{GENERATOR_FOLDER}/`: a TensorFlow SavedModel of the whole sampler (the
  U-Net, the noise schedule, the denoising loop). For TF Serving, its
  `serving_default` signature takes the int32 scalars `num`, `seed` and
  `steps` and returns `images`, uint8 of shape (num, 32, 32, 3).
* `{KERAS_FILENAME}`: the U-Net alone, in Keras' format: it maps noisy
  images in [-1, 1] and their noise level (shape (N, 1), 0 = pure noise,
  {config.timesteps} = clean) to {output}. Load it with
  `import tf_diffusion` (which registers its custom layer; `pip install` the
  tf-diffusion repository), then `keras.saving.load_model("{KERAS_FILENAME}")`.
"""
