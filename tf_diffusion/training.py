"""Training: the strategy, the model, optimizer and EMA weights of a run, `train_one`, the loop.

`Trainer.train_one` is one compiled step: it takes the network's input and
target from `schedule.training_pair` (the images mixed with noise at their
levels; the next, less noisy image for the classic recipe, the velocity for
the default one, the noise for v1), takes the mean squared error of the
network's output against the target (the absolute error with `loss` mae, as
the classic, v1 and v2 do) and applies one Adam step. It runs through
`tf.distribute`, so the same code serves one device or many.
"""

import contextlib
import math
import signal
import sys
import threading
import time

import keras
import tensorflow as tf

from tf_diffusion import TrainingDiverged, UsageError
from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, check_choice
from tf_diffusion.lock import is_chief_task
from tf_diffusion.model import call_network, make_model
from tf_diffusion.schedule import NoiseSchedule, loss_weights, training_pair

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * IMAGE_CHANNELS
QUIET_LINE_SECONDS = 60.0


def make_strategy(name="none"):
    """The `tf.distribute` strategy for `--distribute`."""
    check_choice("distribute", name)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes the run's files (always, but in a multi-worker run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def check_batch_split(batch_size, replicas):
    """Raise `UsageError` unless the global batch splits evenly over the replicas."""
    if batch_size % replicas:
        multiple = max(1, round(batch_size / replicas)) * replicas
        raise UsageError(
            f"`batch_size` {batch_size} does not split evenly over the {replicas} replicas; "
            f"give a multiple of {replicas}, such as {multiple}"
        )


@keras.saving.register_keras_serializable(package="tf_diffusion")
class RoundDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`initial` times `decay` to the power of the finished rounds, never below `floor`."""

    def __init__(self, initial, decay, round_steps, floor):
        self.initial = float(initial)
        self.decay = float(decay)
        self.round_steps = int(round_steps)
        self.floor = float(floor)

    def __call__(self, step):
        rounds = tf.math.floordiv(tf.cast(step, tf.float32), float(self.round_steps))
        rate = self.initial * tf.pow(self.decay, rounds)
        return tf.maximum(rate, self.floor)

    def get_config(self):
        return {
            "initial": self.initial,
            "decay": self.decay,
            "round_steps": self.round_steps,
            "floor": self.floor,
        }


def learning_rate_schedule(config, learning_rate):
    """The rate at each step: "rounds" of x `learning_rate_decay`, or warm-up then cosine.

    "cosine" rises linearly from 0 over `warmup_steps`, then falls along a
    half cosine to `learning_rate_floor` at `max_steps` (raising --max-steps
    on resume stretches what is left of the curve).
    """
    if config.learning_rate_schedule == "rounds":
        return RoundDecay(
            learning_rate,
            config.learning_rate_decay,
            config.round_steps,
            config.learning_rate_floor,
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, config.max_steps - config.warmup_steps),
        alpha=min(1.0, config.learning_rate_floor / learning_rate),
        warmup_target=learning_rate,
        warmup_steps=config.warmup_steps,
    )


def training_precision(precision):
    """The Keras dtype policy to train with: `precision`, or for "auto" this machine's best."""
    if precision != "auto":
        return precision
    gpus = visible_gpus()
    return auto_precision(gpus, cpu_bfloat16=not gpus and cpu_has_bfloat16())


def sampling_policy(sampling_precision):
    """The Keras dtype policy to sample with: `sampling_precision`, or for "auto"
    mixed_bfloat16 where "auto" trains in it, else float32 (no float16: it has no loss scale
    to guard its range here)."""
    if sampling_precision != "auto":
        return sampling_precision
    return "mixed_bfloat16" if training_precision("auto") == "mixed_bfloat16" else "float32"


def auto_precision(gpus, cpu_bfloat16=False):
    """What "auto" trains in, from the machine's facts: `gpus`, a list of (name, compute
    capability as a (major, minor) tuple or None), and whether the CPU has bfloat16 instructions.

    On a GPU, by its generation (the oldest, if several; not measured here, see
    `bench/speed.py --gpu`): mixed_bfloat16 from compute capability 8.0 (A100,
    L4, RTX 30xx/40xx: bfloat16 tensor cores, float32's range, so no loss
    scaling), mixed_float16 with dynamic loss scaling on 7.x (V100, T4: float16
    tensor cores, no bfloat16 ones), float32 below, where TensorFlow's mixed
    precision guide expects no gain. On a CPU, mixed_bfloat16 where it
    multiplies bfloat16 natively (measured: about 1.2x faster), else float32,
    since emulated bfloat16 is slower.
    """
    if gpus:
        capabilities = [capability or (0, 0) for _, capability in gpus]
        oldest = min(tuple(capability) for capability in capabilities)
        if oldest >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if oldest >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


def use_cores(op_threads):
    """Let each CPU op use `op_threads` threads (0: TensorFlow's choice, all cores).

    With 1, TensorFlow's inter-op pool, a thread per core, runs independent
    ops of the step side by side (the two halves of each backward layer, the
    Adam and EMA updates) instead of splitting each small op across the cores:
    the default recipe's batch of 8 trained 1.11x faster on 2 cores
    (`python bench/speed.py --threads`). It can only be set before
    TensorFlow's first op; a later run in the same process keeps the threads
    TensorFlow started with. Returns the threads an op now uses (0: all).
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(op_threads)
    except RuntimeError:  # TensorFlow has run an op in this process: its pools are made
        pass
    return tf.config.threading.get_intra_op_parallelism_threads()


def visible_gpus():
    """The GPUs TensorFlow sees, as (name, compute capability or None) pairs."""
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # a device TensorFlow cannot describe: no capability known
            details = {}
        name = details.get("device_name", getattr(gpu, "name", str(gpu)))
        gpus.append((name, details.get("compute_capability")))
    return gpus


# What a new run of the default recipe trains with on a GPU unless its flags say otherwise
# (v1 and classic stay as they are: they are controls). Chosen from the literature and this
# network's size, NOT measured: no GPU was at hand. `python bench/speed.py --gpu` measures them.
# * batch 128: DDPM (Ho et al. 2020) and improved-diffusion (Nichol and Dhariwal 2021) train
#   CIFAR-10 at 128; keras.io's DDIM example trains a U-Net of about this one's widths (32 to
#   128 channels) at 64 images of 64 px, the pixels of 256 at 32 px. The CPU's 8 was chosen
#   because there a smaller batch buys more steps for the same compute. On a GPU a step of 8
#   images of this 2.6M-parameter network (0.37 GFLOP forward per image, about 9 GFLOP per
#   step with the backward pass) is a millisecond or two of work spread over many hundreds of
#   kernel launches (155 layers forward and back, Adam on 142 weight tensors), so the GPU
#   would mostly wait on them; at 128 (about 140 GFLOP a step) the work dominates even on a
#   T4, and a class's 5000 images still give 39 steps a pass.
# * learning rate 3e-3: this project trained stably at 2e-3 from batch 8 to 64 and at 4e-3 at
#   batch 64, which beat 2e-3 in a short CPU run, and 3e-3 matched 2e-3 over an hour at batch
#   16 (docs/experiments.md). Adam's square-root scaling rule (Malladi et al. 2022) takes 2e-3
#   at batch 64 to 2.8e-3 at 128. The literature's lower rates at 128 (DDPM 2e-4,
#   improved-diffusion 1e-4) are for networks 14 to 20 times this size; keras.io's DDIM uses
#   1e-3 at batch 64 (AdamW). The 100-step warm-up and the cosine decay stay.
# * XLA on: it fuses the many small element-wise ops of each block (GroupNorm, SiLU, the
#   AdaGN scale and shift) into a few kernels, where a small convnet loses its time on a GPU.
#   On one GPU only: jit_compile around a tf.distribute step is known to fail
#   (keras-team/keras#19005), so a `distribute` run keeps it off.
GPU_DEFAULTS = {"batch_size": 128, "learning_rate": 3e-3, "xla": True}


def device_defaults(recipe, gpus, distribute="none"):
    """The settings a new run of `recipe` takes on this machine, under the ones given explicitly.

    `gpus` as in `auto_precision`. Empty without a GPU, and for v1 and the
    classic recipe. With `distribute` mirrored the batch is rounded up to a
    multiple of the GPUs, so that it splits over them.
    """
    if recipe != "default" or not gpus:
        return {}
    defaults = dict(GPU_DEFAULTS)
    if distribute != "none":
        defaults["xla"] = False
    if distribute == "mirrored":
        defaults["batch_size"] = -(-defaults["batch_size"] // len(gpus)) * len(gpus)
    return defaults


def cpu_has_bfloat16(cpu_info="/proc/cpuinfo"):
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX); False if it cannot tell."""
    try:
        with open(cpu_info, encoding="utf-8", errors="replace") as file:
            flags = next((line for line in file if line.startswith("flags")), "")
    except OSError:  # not Linux
        return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(flags.split(":", 1)[-1].split())


@contextlib.contextmanager
def dtype_policy(name):
    """Build layers under the Keras dtype policy `name`, then put the old one back."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


class Trainer:
    """The state of a training run and its compiled steps."""

    def __init__(self, config, strategy=None):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        check_batch_split(config.batch_size, self.strategy.num_replicas_in_sync)
        self.schedule = NoiseSchedule.from_config(config)
        self.precision = training_precision(config.precision)
        learning_rate = config.learning_rate
        if config.scale_learning_rate:
            learning_rate *= self.strategy.num_replicas_in_sync
        # The initial weights come from the seed too, so a run is reproducible.
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            with dtype_policy(self.precision):
                self.model = make_model(config)
            # One copy of the weights per EMA kept (`Config.emas`), sampling's first.
            self.ema_models = {decay: make_model(config) for decay in config.emas}
            for average in self.ema_models.values():
                average.set_weights(self.model.get_weights())
            self.ema_model = self.ema_models.get(config.ema_decay)
            self.adam = keras.optimizers.Adam(learning_rate_schedule(config, learning_rate))
            self.adam.build(self.model.trainable_variables)
            # `optimizer` applies the gradients; `adam` is the plain Adam inside
            # it, which the checkpoint holds as "optimizer" so that float32 and
            # mixed-precision runs save the same Adam variables. A mixed_float16
            # run also saves its dynamic loss scale, as "loss_scale", so that it
            # resumes exactly; a run may switch --precision when it resumes.
            self.optimizer = self.adam
            self.loss_scale = None
            if self.precision == "mixed_float16":  # bfloat16 has float32's range: no scaling
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.adam)
                self.optimizer.build(self.model.trainable_variables)
                self.loss_scale = tf.Module(name="loss_scale")
                self.loss_scale.dynamic_scale = self.optimizer.dynamic_scale
                self.loss_scale.step_counter = self.optimizer.step_counter
            # Used only when `train_one` is called without levels and noise.
            self.generator = tf.random.Generator.from_seed(config.seed)
            # The data pipeline's position: a resumed run starts it here.
            self.batches_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches_seen")
        self.train_one = tf.function(self._train_one, jit_compile=config.xla or None)
        self.train_steps = tf.function(self._train_steps, jit_compile=None)

    # ---- state

    @property
    def step(self):
        """The number of optimizer steps taken so far."""
        return int(self.adam.iterations.numpy())

    @property
    def learning_rate(self):
        return float(self.adam.learning_rate.numpy())

    @property
    def sampling_model(self):
        """The EMA weights when the recipe keeps them, else the trained weights."""
        return self.ema_model if self.ema_model is not None else self.model

    def trackables(self):
        """What a checkpoint must hold to continue this run exactly."""
        objects = {
            "model": self.model,
            "optimizer": self.adam,
            "generator": self.generator,
            "batches_seen": self.batches_seen,
        }
        for decay, name in self.config.emas.items():
            objects[name] = self.ema_models[decay]
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        return objects

    # ---- steps

    def _replica_step(self, images, levels, noises):
        inputs, targets = training_pair(
            self.schedule, self.config.prediction, images, levels, noises
        )
        global_batch = tf.shape(images)[0] * self.strategy.num_replicas_in_sync
        config = self.config
        with tf.GradientTape() as tape:
            outputs = call_network(self.model, inputs, levels, training=True)
            errors = tf.abs(outputs - targets)
            if config.loss_weighting != "none":
                errors *= loss_weights(
                    self.schedule,
                    config.prediction,
                    config.loss_weighting,
                    levels,
                    config.min_snr_gamma,
                )
            if config.loss == "mse":
                errors = tf.square(errors)
            loss = tf.reduce_sum(errors) / tf.cast(global_batch * PIXELS_PER_IMAGE, tf.float32)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss

    def _update_ema(self):
        # Early on the decay is (1 + step) / (10 + step), an average over about the last
        # ninth of the steps, until it reaches the EMA's own decay.
        step = tf.cast(self.adam.iterations, tf.float32)
        for most, averages in self.ema_models.items():
            decay = tf.minimum(most, (1.0 + step) / (10.0 + step))
            for average, weight in zip(averages.weights, self.model.weights):
                average.assign(decay * average + (1.0 - decay) * tf.cast(weight, average.dtype))

    def _train_one(self, images, levels=None, noises=None):
        """One step on a batch of images in [-1, 1]; returns the loss, the `loss` error.

        `levels` and `noises` normally come from the data pipeline; without
        them they are drawn here from the run's random generator.
        """
        if levels is None:
            batch = tf.shape(images)[0]
            levels = self.schedule.generate_ts(batch, self.generator)
            noises = self.generator.normal(tf.shape(images))
        per_replica_loss = self.strategy.run(self._replica_step, args=(images, levels, noises))
        self._update_ema()
        self.batches_seen.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    def _train_steps(self, iterator, count):
        """`count` steps from a (distributed) iterator in one call; returns the mean loss."""
        total = tf.constant(0.0)
        for _ in tf.range(count):
            images, levels, noises = next(iterator)
            total += self._train_one(images, levels, noises)
        return total / tf.cast(count, tf.float32)


class Progress:
    """Step, loss, learning rate, images/s and ETA: a bar on a terminal, lines elsewhere.

    Also writes the scalars, and the sample images of each round, to
    TensorBoard when given a summary writer.
    """

    def __init__(
        self,
        start_step,
        max_steps,
        batch_size,
        quiet=False,
        writer=None,
        line_seconds=10.0,
        stream=None,
    ):
        self.stream = stream or sys.stdout
        self.start_step = start_step
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.writer = writer
        self.line_seconds = line_seconds
        self.start_time = time.monotonic()
        self.last_line_time = -math.inf
        self.bar = None
        if quiet:
            self.line_seconds = max(line_seconds, QUIET_LINE_SECONDS)
        elif self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_steps,
                initial=start_step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, step, loss, learning_rate):
        now = time.monotonic()
        elapsed = now - self.start_time
        steps_done = step - self.start_step
        images_per_second = steps_done * self.batch_size / elapsed if elapsed > 0 else 0.0
        seconds_per_step = elapsed / steps_done if steps_done else 0.0
        eta = seconds_per_step * (self.max_steps - step)
        self.scalars(
            step,
            {"loss": loss, "learning_rate": learning_rate, "images_per_second": images_per_second},
        )
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{learning_rate:.2e}",
                img_s=f"{images_per_second:.1f}",
                refresh=False,
            )
            return
        final = step >= self.max_steps
        if final or now - self.last_line_time >= self.line_seconds:
            self.last_line_time = now
            print(
                f"step {step}/{self.max_steps}  loss {loss:.4f}  lr {learning_rate:.2e}  "
                f"{images_per_second:.1f} img/s  {seconds_per_step:.2f} s/step  "
                f"ETA {format_duration(eta)}",
                file=self.stream,
                flush=True,
            )

    def samples(self, step, images, most=16):
        """Show up to `most` sample images (floats in [-1, 1]) in TensorBoard at `step`."""
        if self.writer is not None:
            with self.writer.as_default(step=step):
                pictures = tf.clip_by_value((images[:most] + 1.0) / 2.0, 0.0, 1.0)
                tf.summary.image("samples", pictures, max_outputs=most)

    def scalars(self, step, values):
        """Write each of `values` (a name to a number) to TensorBoard at `step`."""
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, value)

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()


def format_duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def fit(
    trainer,
    iterator,
    max_steps,
    progress=None,
    on_save=None,
    on_round_end=None,
    save_every=1000,
    save_every_minutes=10.0,
    steps_per_call=1,
    max_seconds=None,
):
    """Train until `max_steps`, or for `max_seconds`, calling `on_save(step)` and
    `on_round_end(step)` on time; return the step reached.

    Raises `TrainingDiverged`, without saving, when the loss stops being finite.
    A first Ctrl-C or SIGTERM raises `KeyboardInterrupt` between two whole steps,
    not inside TensorFlow or a save; a second one raises at once, wherever the
    loop is (see `interrupts_between_steps`).
    """
    with interrupts_between_steps() as interrupted:
        config = trainer.config
        last_save_time = started = time.monotonic()
        step = trainer.step
        while step < max_steps and (
            max_seconds is None or time.monotonic() - started < max_seconds
        ):
            if interrupted:
                raise KeyboardInterrupt(f"signal {interrupted[0]}")
            count = min(steps_per_call, max_steps - step)
            if count == 1:
                images, levels, noises = next(iterator)
                loss = trainer.train_one(images, levels, noises)
            else:
                loss = trainer.train_steps(iterator, tf.constant(count))
            loss = float(loss)
            new_step = trainer.step
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at step {new_step}; nothing was saved after the last "
                    "checkpoint. Lower `learning_rate` or use `precision` float32, then run again "
                    "to resume"
                )
            if progress is not None:
                progress.update(new_step, loss, trainer.learning_rate)
            round_ended = new_step // config.round_steps > step // config.round_steps
            save_due = new_step // save_every > step // save_every or (
                save_every_minutes and time.monotonic() - last_save_time >= 60 * save_every_minutes
            )
            step = new_step
            if on_round_end is not None and round_ended:
                on_round_end(step)
            if on_save is not None and save_due and step < max_steps:
                on_save(step)
                last_save_time = time.monotonic()
        return step


@contextlib.contextmanager
def interrupts_between_steps(signal_numbers=(signal.SIGINT, signal.SIGTERM)):
    """While inside, Ctrl-C and SIGTERM only note the signal, in the list this yields.

    An exception raised by a signal handler can land anywhere in the main thread:
    inside TensorFlow's Python layer or halfway through a save. So the training
    loop reads the list between steps instead. A second signal raises at once,
    for a user who will not wait. A signal whose handler is not a Python function
    (ignored, or the default that ends the process) is left alone, and so is
    everything outside the main thread, where Python cannot set handlers.
    """
    interrupted = []

    def note(signal_number, frame):
        if interrupted:
            raise KeyboardInterrupt(f"signal {signal_number}, again")
        interrupted.append(signal_number)
        print(
            "\nStopping after this step (interrupt again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signal_number in signal_numbers:
            handler = signal.getsignal(signal_number)
            if callable(handler):
                previous[signal_number] = signal.signal(signal_number, note)
    try:
        yield interrupted
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
