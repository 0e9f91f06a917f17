"""What `train.py` and `predict.py` do, once their arguments are parsed."""

import contextlib
import io
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tf_diffusion import UsageError
from tf_diffusion.checkpoint import CheckpointStore, load_for_sampling, resolve_config
from tf_diffusion.config import CIFAR10_CLASS_NAMES
from tf_diffusion.data import load_images, make_dataset
from tf_diffusion.diffusion import TimeDraw
from tf_diffusion.export import export_run
from tf_diffusion.files import best_run_directory, write_atomically
from tf_diffusion.hardware import device_defaults, is_chief, make_strategy, use_cores, visible_gpus
from tf_diffusion.images import near_square, save_gif, save_grid, save_strip, to_uint8
from tf_diffusion.lock import training_lock
from tf_diffusion.loop import Progress, fit
from tf_diffusion.sampling import Sampler
from tf_diffusion.tracking import KidTracker
from tf_diffusion.trainer import Trainer

ROUND_SAMPLES = 25


def train(
    weights_dir="checkpoints",
    recipe=None,
    settings=None,
    fresh=False,
    quiet=False,
    stop_at=None,
    max_minutes=None,
    lock=None,
):
    """Train (or resume) the run in `weights_dir` up to its `max_steps`; return the step reached.

    `settings` are the ones given explicitly (the rest keep the saved run's,
    or the recipe's). `stop_at` (a step) and `max_minutes` (of training)
    end this session sooner, saved, without changing the run's settings: its
    `max_steps`, and so its learning-rate schedule, stay. `lock` is the folder's
    lock when the caller took it (train.py does, before TensorFlow loads);
    without one it is taken here.
    """
    distribute = (settings or {}).get("distribute")
    with (
        contextlib.nullcontext(lock) if lock else training_lock(weights_dir, distribute, fresh)
    ) as lock:
        # One run, one writer: the lock is held from before --fresh moves anything. A worker
        # that is not the chief holds none, and leaves moving the old run to the chief.
        gpus = visible_gpus()  # a new run of the default recipe on a GPU takes GPU defaults
        defaults = device_defaults(recipe or "default", gpus, distribute or "none")
        config, resumed, moved_to = resolve_config(
            weights_dir, recipe, settings, fresh and lock is not None, lock, defaults
        )
        if moved_to:
            print(f"--fresh: moved the old run to {moved_to}", flush=True)
        if max_minutes is not None and config.distribute == "multi-worker":
            raise UsageError(  # the workers' clocks would stop them at different steps
                "`max_minutes` cannot end a multi-worker run; use `stop_at` STEP instead"
            )
        op_threads = use_cores(config.op_threads) if not gpus else 0  # before TensorFlow runs
        images = load_images(config.data, config.label)
        strategy = make_strategy(config.distribute)
        say = print if is_chief(strategy) else silent
        trainer = Trainer(config, strategy)
        store = CheckpointStore(
            weights_dir, trainer.trackables(), config.keep_checkpoints, lock and lock.beat, say
        )
        announce(trainer, store, config, len(images), resumed, op_threads, say)
        if not resumed:
            say_device_defaults(gpus, defaults, settings, config, trainer.precision, say)
        end_step, end_flag = config.max_steps, "--max-steps"
        if stop_at is not None and stop_at < end_step:
            end_step, end_flag = stop_at, "--stop-at"
        if trainer.step >= end_step:
            say(
                f"Already at step {trainer.step}, which reaches {end_flag} {end_step}; "
                f"raise {end_flag} to train more",
                flush=True,
            )
            return trainer.step
        return train_to(trainer, store, config, images, end_step, quiet, say, max_minutes)


def silent(*arguments, **keywords):
    """`print` for a worker that is not the chief: only the chief reports."""


def announce(trainer, store, config, image_count, resumed, op_threads, say):
    """Restore the newest checkpoint of a resumed run; say what this run is."""
    strategy = trainer.strategy
    hardware = trainer.precision + (f", {op_threads} thread per op" if op_threads else "")
    if resumed:
        path = store.restore()
        say(
            f"Resuming from step {trainer.step} ({os.path.basename(path)}) in "
            f"{config.weights_dir}, {hardware}",
            flush=True,
        )
        return
    replicas = strategy.num_replicas_in_sync
    say(
        f"Starting a new '{config.recipe}' run in {config.weights_dir}: class {config.label} "
        f"({CIFAR10_CLASS_NAMES[config.label]}), {image_count} images, "
        f"{trainer.model.count_params():,} parameters, {replicas} "
        f"replica{'s' if replicas > 1 else ''}, {hardware}",
        flush=True,
    )


def say_device_defaults(gpus, defaults, settings, config, precision, say):
    """One line on what a new GPU run took from `hardware.device_defaults` (the settings not
    given explicitly) and from "auto" precision, and that none of it was measured."""
    given = {name for name, value in (settings or {}).items() if value is not None}
    chosen = [
        f"{DEFAULT_LABELS[name]} {getattr(config, name):g}"
        if name != "xla"
        else f"XLA {'on' if config.xla else 'off'}"
        for name in defaults
        if name not in given
    ]
    if defaults and config.precision == "auto":
        chosen.append(precision)  # what "auto" chose, as the trainer resolved it
    if not chosen:
        return
    devices = ", ".join(
        dict.fromkeys(
            f"{name} (compute capability {'.'.join(map(str, capability or ('?',)))})"
            for name, capability in gpus
        )
    )
    say(
        f"On the GPU {devices} this new run takes {', '.join(chosen)}: chosen from the "
        "literature, not measured (flags override them; python bench/speed.py --gpu measures "
        "them)",
        flush=True,
    )


DEFAULT_LABELS = {"batch_size": "batch", "learning_rate": "learning rate"}


def train_to(trainer, store, config, images, end_step, quiet, say, max_minutes=None):
    """Train from the restored step to `end_step`, or for `max_minutes`, saving on schedule,
    on Ctrl-C or SIGTERM, and at the end; return the step reached."""
    start_step = trainer.step
    dataset = make_dataset(  # from the batch the run has reached
        images,
        config.batch_size,
        config.timesteps,
        config.seed,
        start_batch=int(trainer.batches_seen.numpy()),
        draw=TimeDraw.from_config(config, trainer.schedule),
        flip=config.flip,
        noise_keys=config.noise_keys,
    )
    if config.distribute != "none":
        dataset = trainer.strategy.experimental_distribute_dataset(dataset)
    # Every worker of a multi-worker run takes part in each save; only the chief
    # writes into the weights folder, the others into a scratch folder, and only
    # the chief reports and draws samples.
    chief = is_chief(trainer.strategy)
    if not chief:
        scratch = tempfile.mkdtemp(prefix="tf-diffusion-worker-")
        store = CheckpointStore(scratch, trainer.trackables(), config.keep_checkpoints, say=say)
    progress, on_round_end = None, None
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(config.weights_dir, "logs"))
        progress = Progress(start_step, end_step, config.batch_size, quiet, writer)
        on_round_end = round_sampler(trainer, config, progress, images)

    def save_unless_saved(step):
        if step > max(start_step, store.saved_step):
            store.save(step, config)

    try:
        step = fit(
            trainer,
            iter(dataset),
            end_step,
            progress=progress,
            on_save=lambda step: store.save(step, config),
            on_round_end=on_round_end,
            save_every=config.save_every,
            save_every_minutes=config.save_every_minutes,
            steps_per_call=config.steps_per_call,
            max_seconds=None if max_minutes is None else 60 * max_minutes,
        )
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        save_unless_saved(trainer.step)
        say(
            f"\nInterrupted: saved step {trainer.step} in {config.weights_dir}; "
            "run the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        raise
    if progress is not None:
        progress.close()
    save_unless_saved(step)
    if chief and step % config.round_steps:  # a round that just ended has its grid already
        on_round_end(step)
    if step < end_step:
        say(
            f"Stopped after --max-minutes {max_minutes:g}: step {step} saved in "
            f"{config.weights_dir}; run the same command to continue",
            flush=True,
        )
    else:
        say(f"Done: step {step} saved in {config.weights_dir}", flush=True)
    if not chief:
        shutil.rmtree(store.directory, ignore_errors=True)
    return step


def round_sampler(trainer, config, progress, images):
    """The chief's round-end callback: a grid of samples as a PNG and in TensorBoard,
    and with --track-kid, KID and FID against the training `images` and the best checkpoint.
    """
    sampler = Sampler(trainer.sampling_model, config)  # compiled once, used at each round end
    track = KidTracker(trainer, config, images, sampler, progress) if config.track_kid else None

    def write_samples(step):
        samples = sampler.sample(ROUND_SAMPLES, seed=config.seed)
        path = os.path.join(config.weights_dir, f"samples-step-{step:07d}.png")
        save_grid(samples, path, title=f"{config.recipe} recipe, step {step}")
        progress.samples(step, samples)
        progress.message(f"step {step}: wrote {path}")
        if track is not None:
            track(step)

    return write_samples


def predict(
    weights_dir="checkpoints",
    num=25,
    out="outputs/samples.png",
    npz=None,
    steps=False,
    gif=None,
    grid=None,
    seed=0,
    sampling_steps=None,
    sampler=None,
    spacing=None,
    sampling_precision=None,
    evaluate=False,
    data=None,
    inception_weights="imagenet",
    best=False,
    export=None,
    ema=None,
):
    """Sample `num` images from the run in `weights_dir` and write the requested files.

    `grid` is the layout of the `out` PNG, (rows, columns); None is near square.
    With `evaluate`, also print FID and KID against as many training images of
    the run's class (from `data`, or the run's own data source). With `best`,
    sample from the checkpoint with the lowest KID that --track-kid kept. With
    `export`, write the exported model into that folder instead. `ema` picks
    the weights (`Config.weights_name`): a decay the run keeps, or "none".
    """
    changes = dict(
        sampling_steps=sampling_steps,
        sampler=sampler,
        spacing=spacing,
        sampling_precision=sampling_precision,
    )
    if export:
        return export_run(weights_dir, export, best, ema=ema, **changes)
    if best:
        weights_dir = best_run_directory(weights_dir)
    rows, columns = grid or near_square(num)
    config, model = load_for_sampling(weights_dir, ema, **changes)
    real = load_images(data or config.data, config.label) if evaluate else None
    sampling = Sampler(model, config)
    images = sampling.sample(num, seed=seed)
    written = []
    if out:
        save_grid(images, out, rows, columns)
        written.append(out)
    if npz:
        save_npz(to_uint8(images), npz)
        written.append(npz)
    if steps or gif:
        frames_num = min(num, 8)
        _, frames = sampling.sample(frames_num, seed=seed, keep_frames=True)
        if steps:
            strip_path = steps_path(out or "outputs/samples.png")
            strip_frames, strip_times = thin_frames(frames, sampling.times)
            save_strip(strip_frames, strip_times, strip_path)
            written.append(strip_path)
        if gif:
            save_gif(frames, sampling.times, gif)
            written.append(gif)
    print(
        f"{num} samples from {weights_dir} ({config.recipe} recipe, {config.sampler} sampler, "
        f"{sampling.sampling_steps} steps{precision_note(model)}): wrote "
        f"{', '.join(written) or 'nothing'}",
        flush=True,
    )
    if evaluate:
        from tf_diffusion.metrics import evaluate as measure

        chosen = np.random.default_rng(seed).permutation(len(real))[:num]
        scores = measure(to_uint8(images), real[chosen], inception_weights)
        print(
            f"FID {scores['fid']:.2f}  KID {scores['kid']:.5f} +- {scores['kid_std']:.5f}  "
            f"({scores['generated']} generated vs {scores['real']} training images, "
            "Keras InceptionV3 features)",
            flush=True,
        )
    return images


def steps_path(out):
    root, _ = os.path.splitext(out)
    return root + "_steps.png"


def thin_frames(frames, times, most=17):
    """At most `most` evenly spaced frames and their times, always the first and the last."""
    if len(frames) <= most:
        return frames, times
    keep = np.unique(np.round(np.linspace(0, len(frames) - 1, most)).astype(int))
    return frames[keep], np.asarray(times)[keep]


def precision_note(model):
    """The policy of a network that samples under a mixed one (", mixed_bfloat16"), else ""."""
    policy = model.dtype_policy.name
    return "" if policy == "float32" else f", {policy}"


def save_npz(images, path):
    """Write `images` under key `x`, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=images)
    try:
        write_atomically(path, buffer.getvalue())
    except OSError as error:
        raise UsageError(
            f"`npz` {path} cannot be written ({error.strerror}); choose another path"
        ) from None
