"""The machine: the `tf.distribute` strategy, CPU threads, precision, and a GPU's defaults.

What a run decides from the hardware it finds lives here, apart from the
method: how many threads a CPU op may use, which Keras dtype policy trains
and samples ("auto" picks by the CPU's bfloat16 instructions or the GPU's
generation), and what a new run takes on a GPU.
"""

import contextlib

import keras
import tensorflow as tf

from tf_diffusion import UsageError
from tf_diffusion.config import check_choice
from tf_diffusion.lock import is_chief_task


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
    multiplies bfloat16 natively, else float32, since emulated bfloat16 is
    slower (docs/speed.md).
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
    Adam and EMA updates) instead of splitting each small op across the cores,
    which is faster for small batches (`python bench/speed.py --threads`
    measures it; docs/speed.md has the figures). It can only be set before
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
# (v1 and classic stay as they are: they are controls). Chosen from the literature and the
# network's size, not measured; docs/speed.md gives the reasons, and `python bench/speed.py
# --gpu` measures them. XLA stays off under `distribute` (see `device_defaults`).
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
