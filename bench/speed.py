#!/usr/bin/env python3
"""Training and sampling speed: the classic recipe's own loop against tf_diffusion, side by side.

    python bench/speed.py                       # classic width 128, batch 128
    python bench/speed.py --cpu-options         # also: oneDNN off, thread settings, XLA
    python bench/speed.py --precision mixed_float16 --xla   # GPU options, the project's side
    python bench/speed.py --recipes v1,default  # each recipe's training step, % of peak
    python bench/speed.py --recipes default --precision float32,mixed_bfloat16  # and each policy
    python bench/speed.py --gpu                 # on a GPU: the table to send (see the README)
    python bench/speed.py --threads             # train.py's default run: how it uses the cores

Both sides use the same model width and batch, in one process:
(a) the reference: the classic notebook's loop, `model.train_on_batch` on
    numpy noise and sampling with `model.predict` once per step;
(b) tf_diffusion: the compiled `train_one` fed by tf.data, and the compiled
    sampler (one `tf.function` for the whole denoising loop).
The achieved GFLOP/s come from the model's multiply-adds counted layer by
layer (a training step is taken as 3x the forward pass), against a 4096^2
float32 `tf.matmul` measured in the same run.

`--threads` instead times the default recipe's training step as train.py
runs it (its batch, its precision), against the ways of using the cores it
could take instead: TensorFlow's own threads (the v2 recipe's), one replica
per core through `tf.distribute` on logical CPU devices, a larger batch, and
two single-thread runs side by side (what bench/quality.py's CPU-minutes
are). Each is its own process, since TensorFlow's threads are set once per
process; the variants take turns for `--rounds` rounds, and the table gives
each one's median.

`--gpu` instead times the default recipe's training step on the GPU at
batches 8, 32, 128 and 512, in float32 and in the mixed precision that
`--precision auto` picks for that GPU, each with XLA off and on, and
sampling 1000 images, in one table: what the GPU defaults of a new run
(`tf_diffusion.hardware.GPU_DEFAULTS`, chosen from the literature) were
never measured against. Each cell builds its own trainer, is warmed up once
(tracing, XLA compilation) and then timed over `--steps` (default 20) steps.
"""

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, help="default 128; with --recipes the recipe's")
    parser.add_argument(
        "--steps", type=int, help="timed training steps per side (default 6; with --gpu 20)"
    )
    parser.add_argument("--sample-num", type=int, default=1000)
    parser.add_argument(
        "--precision",
        default="float32",
        help="Keras dtype policy of the project's training (with --recipes: a comma list, each "
        "timed side by side)",
    )
    parser.add_argument("--xla", action="store_true")
    parser.add_argument(
        "--cpu-options",
        action="store_true",
        help="also time the project's step under other CPU settings, each in its own process",
    )
    parser.add_argument(
        "--recipes",
        help="instead: time the training step of these recipes (comma list, e.g. v1,default) "
        "at their own width and batch, side by side, with GFLOP/s and %% of the matmul peak",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="instead: the default recipe's training img/s on this GPU at batches 8-512, float32 "
        "against its mixed precision, XLA off and on, and sampling; the table to send",
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="instead: train.py's default run against other ways of using the CPU's cores, each "
        "in its own process, taking turns; images/s and %% of the matmul peak",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --threads: turns each")
    parser.add_argument("--only-project-training", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--intra-op", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inter-op", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.batch_size is None and not arguments.recipes:
        arguments.batch_size = 128
    if arguments.steps is None:
        arguments.steps = 20 if arguments.gpu else 100 if arguments.threads else 6
    return arguments


def machine(tf):
    """bench/quality.py's line about the machine, with its GPUs and TensorFlow's version."""
    import quality

    gpus = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return f"{quality.machine()}, GPU: {', '.join(gpus) or 'none'}, TensorFlow {tf.__version__}"


def forward_flops(model):
    """Floating-point operations of one forward pass for one image (2 per multiply-add)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            height, width, channels_out = layer.output.shape[1:]
            kernel = layer.kernel.shape
            total += 2 * kernel[0] * kernel[1] * kernel[2] * channels_out * height * width
        elif isinstance(layer, layers.Dense):
            inputs, outputs = layer.kernel.shape
            positions = 1
            for size in layer.output.shape[1:-1]:
                positions *= size
            total += 2 * inputs * outputs * positions
    return total


def matmul_peak(tf, size=4096, repeats=5):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    multiply = tf.function(lambda x, y: tf.matmul(x, y))
    multiply(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        multiply(a, b).numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def timed(function, repeats):
    function()  # warm-up: tracing, compilation, memory
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def reference_side(config, images, arguments, np, keras):
    """The classic notebook's loop, as it was written: numpy noise and Keras' own calls."""
    from tf_diffusion.model import make_model

    model = make_model(config)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=8e-4), loss=keras.losses.MeanAbsoluteError()
    )
    time_bar = 1 - np.linspace(0, 1.0, config.timesteps + 1)
    random = np.random.default_rng(0)

    def train_once():
        batch = images[random.integers(len(images), size=arguments.batch_size)]
        t = random.integers(0, config.timesteps, size=arguments.batch_size)
        noise = random.normal(size=batch.shape)
        a = time_bar[t].reshape((-1, 1, 1, 1))
        b = time_bar[t + 1].reshape((-1, 1, 1, 1))
        img_a = batch * (1 - a) + noise * a
        img_b = batch * (1 - b) + noise * b
        model.train_on_batch([img_a, t], img_b)

    def sample(count):
        x = random.normal(size=(count, 32, 32, 3))
        for level in range(config.timesteps):
            x = model.predict([x, np.full((count,), level)], verbose=0)
        return x

    return model, train_once, sample


def project_side(config, images, arguments, tf, strategy=None):
    from tf_diffusion.data import make_dataset
    from tf_diffusion.sampling import Sampler
    from tf_diffusion.trainer import Trainer

    trainer = Trainer(config, strategy)
    dataset = make_dataset(images, config.batch_size, config.timesteps, config.seed)
    if strategy is not None:
        dataset = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(dataset)

    def train_once():
        float(trainer.train_one(*next(iterator)))

    sampler = Sampler(trainer.model, config)

    def sample(count):
        return sampler.sample(count, keep_frames=count <= 8)

    return trainer.model, train_once, sample


def recipes_mode(arguments, images, tf):
    """The training throughput of each recipe as it trains, against the matmul peak."""
    from tf_diffusion.config import Config

    peak = matmul_peak(tf)
    rows = []
    for recipe in arguments.recipes.split(","):
        for precision in arguments.precision.split(","):
            config = Config.for_recipe(recipe, precision=precision, xla=arguments.xla)
            model, train_once, _ = project_side(config, images, arguments, tf)
            seconds = timed(train_once, arguments.steps)
            training_flops = 3 * forward_flops(model)
            images_per_second = config.batch_size / seconds
            gflops = images_per_second * training_flops / 1e9
            rows.append((recipe, config, model.count_params(), images_per_second, gflops))
    print(f"bench/speed.py  {' '.join(sys.argv[1:])}")
    print(f"machine: {machine(tf)}")
    print(f"tf.matmul 4096x4096 float32 peak: {peak:.0f} GFLOP/s")
    print(
        "| recipe | precision | width | batch | parameters | training img/s | × first row | "
        "GFLOP/s | % of float32 matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, config, parameters, images_per_second, gflops in rows:
        print(
            f"| {recipe} | {config.precision} | {config.width} | {config.batch_size} | "
            f"{parameters:,} | {images_per_second:.1f} | {images_per_second / rows[0][3]:.2f} | "
            f"{gflops:.0f} | {100 * gflops / peak:.0f}% |"
        )


def threads_variants(config):
    """(name, flags of a child process, how many side by side) for `--threads`."""
    batch, cores = config.batch_size, os.cpu_count()
    variants = [
        (f"train.py now: batch {batch}, {config.op_threads} thread per op", [], 1),
        (f"v2 (train.py before): batch {batch}, TensorFlow's threads", ["--op-threads", "0"], 1),
        (
            f"{cores} replicas (tf.distribute, logical CPUs), batch {cores} x {batch}, "
            "1 thread per op",
            ["--replicas", str(cores), "--batch-size", str(cores * batch)],
            1,
        ),
        (f"batch {2 * batch}, 1 thread per op", ["--batch-size", str(2 * batch)], 1),
        (
            f"batch {2 * batch}, TensorFlow's threads",
            ["--batch-size", str(2 * batch)] + ["--op-threads", "0"],
            1,
        ),
    ]
    if cores > 1:
        variants.append(
            (
                f"{cores} runs side by side, batch {batch}, 1 thread each (their sum)",
                ["--op-threads", "1", "--inter-op", "1"],
                cores,
            )
        )
    return variants


def threads_child(arguments, flags, copies):
    """Start `copies` child processes at once; their summed images/s, or None if one failed."""
    command = [
        sys.executable,
        __file__,
        "--only-project-training",
        "--recipes",
        "default",
        "--steps",
        str(arguments.steps),
        *flags,
    ]
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    total = 0.0
    for child in children:
        output, errors = child.communicate()
        try:
            total += json.loads(output.strip().splitlines()[-1])["images_per_second"]
        except (IndexError, ValueError, KeyError):
            print(f"failed: {' '.join(flags)}: {errors.strip().splitlines()[-1:]}", flush=True)
            return None
    return total


def threads_run(arguments, images, tf):
    """One process of `--threads`: the recipe's step with its threads, as train.py sets them."""
    from tf_diffusion.config import Config
    from tf_diffusion.hardware import use_cores

    settings = {"batch_size": arguments.batch_size} if arguments.batch_size else {}
    if arguments.op_threads is not None:
        settings["op_threads"] = arguments.op_threads
    config = Config.for_recipe(arguments.recipes, **settings)
    use_cores(config.op_threads)
    strategy = None
    if arguments.replicas > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * arguments.replicas
        )
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{index}" for index in range(arguments.replicas)]
        )
    _, train_once, _ = project_side(config, images, arguments, tf, strategy)
    for _ in range(4):  # beyond timed()'s one: the first steps after tracing are slow
        train_once()
    seconds = timed(train_once, arguments.steps)
    print(json.dumps({"images_per_second": config.batch_size / seconds}))


def threads_mode(arguments, tf):
    """train.py's default run against other ways to use the cores, side by side, in turns."""
    import statistics

    from tf_diffusion.config import Config
    from tf_diffusion.hardware import training_precision
    from tf_diffusion.model import make_model

    config = Config.for_recipe("default")
    training_flops = 3 * forward_flops(make_model(config))
    peak_before = matmul_peak(tf)
    variants = threads_variants(config)
    speeds = {name: [] for name, _, _ in variants}
    for _ in range(arguments.rounds):
        for name, flags, copies in variants:
            speed = threads_child(arguments, flags, copies)
            if speed is not None:
                speeds[name].append(speed)
    peak_after = matmul_peak(tf)
    print(f"bench/speed.py  {' '.join(sys.argv[1:])}")
    print(f"machine: {machine(tf)}")
    print(
        f"tf.matmul 4096x4096 float32 peak, all cores: {peak_before:.0f} GFLOP/s before, "
        f"{peak_after:.0f} after; default recipe, {training_precision(config.precision)}, "
        f"{arguments.steps} timed steps a process, median of {arguments.rounds} turns"
    )
    print(
        "| how the cores are used | training img/s | × train.py now | GFLOP/s | % of peak | turns |"
    )
    print("|---|---|---|---|---|---|")
    first = statistics.median(speeds[variants[0][0]] or [math.nan])
    for name, _, _ in variants:
        value = statistics.median(speeds[name] or [math.nan])
        gflops = value * training_flops / 1e9
        turns = ", ".join(f"{speed:.1f}" for speed in speeds[name])
        print(
            f"| {name} | {value:.1f} | {value / first:.2f} | {gflops:.0f} | "
            f"{100 * gflops / peak_before:.0f}% | {turns} |"
        )


GPU_BATCH_SIZES = (8, 32, 128, 512)
# Cells that would start after this many seconds are left out, so that --gpu ends within 5
# minutes even where tracing and XLA compilation are slow.
GPU_BUDGET_SECONDS = 240
NO_GPU = "error: --gpu: no GPU is visible to TensorFlow; run this on a GPU machine such as Colab"


def gpu_precisions(gpus):
    """float32 and the mixed precision `--precision auto` takes on `gpus` (float16 where that
    is float32, to show what it would give)."""
    from tf_diffusion.hardware import auto_precision

    chosen = auto_precision(gpus)
    return ("float32", "mixed_float16" if chosen == "float32" else chosen)


def gpu_cells(
    tf,
    device,
    batch_sizes,
    precisions,
    steps,
    sample_num,
    images,
    width=None,
    xla_options=(False, True),
    peak_size=4096,
    budget_seconds=None,
    log=None,
):
    """The default recipe's training speed on `device` for each batch, precision and XLA option.

    Returns `(rows, sampling, peak)`: a dict per cell, in the order batch,
    precision, XLA (batch_size, precision, xla, and images_per_second and
    gflops, or `failed`, the reason), the seconds of `sample_num` samples the
    first time (tracing included) and the second, and the float32 `tf.matmul`
    peak in GFLOP/s. `width` None is the recipe's. One trainer per precision
    serves every batch (`shared_trainer`), so that tracing does not take most
    of the time; XLA still compiles each batch size, in the cell's warm-up.
    """
    from tf_diffusion.config import Config
    from tf_diffusion.data import make_dataset
    from tf_diffusion.model import make_model
    from tf_diffusion.sampling import Sampler

    start = time.perf_counter()
    rows = []
    with tf.device(device):
        peak = matmul_peak(tf, size=peak_size)
        config = Config.for_recipe("default", width=width)
        sampler = Sampler(make_model(config), config)
        sampling = [seconds_of(lambda: sampler.sample(sample_num)) for _ in range(2)]
        trainers = {}  # precision: its trainer, step functions and level draw, made on first use
        for batch_size in batch_sizes:
            for precision in precisions:
                for xla in xla_options:
                    row = {"batch_size": batch_size, "precision": precision, "xla": xla}
                    rows.append(row)
                    if budget_seconds and time.perf_counter() - start > budget_seconds:
                        row["failed"] = f"not run: past the {budget_seconds} s budget"
                        continue
                    try:
                        if precision not in trainers:
                            trainers[precision] = shared_trainer(tf, precision, width, xla_options)
                        trainer, steps_of, draw = trainers[precision]
                        with tf.device("/CPU:0"):  # the input pipeline runs on the CPU
                            dataset = make_dataset(
                                images, batch_size, trainer.config.timesteps, 0, draw=draw
                            )
                        batches = iter(dataset)
                        step = steps_of[xla]
                        seconds = timed(lambda: float(step(*next(batches))), steps)
                    except Exception as error:  # out of memory, or XLA cannot compile
                        text = str(error).strip().splitlines() or [type(error).__name__]
                        row["failed"] = re.sub(r"[\s|]+", " ", text[0])[:80]
                    else:
                        training_flops = 3 * forward_flops(trainer.model)
                        row["images_per_second"] = batch_size / seconds
                        row["gflops"] = row["images_per_second"] * training_flops / 1e9
                    batches = dataset = None
                    if log:
                        log(
                            f"batch {batch_size}, {precision}, XLA {'on' if xla else 'off'}: "
                            f"{row.get('images_per_second', 0):.0f} img/s {row.get('failed', '')}"
                        )
    trainers = None
    gc.collect()
    return rows, sampling, peak


def shared_trainer(tf, precision, width, xla_options):
    """A trainer of the default recipe in `precision`, with a step function per XLA option
    that serves every batch size (traced with the batch unknown from the second size on)."""
    from tf_diffusion.config import Config
    from tf_diffusion.diffusion import TimeDraw
    from tf_diffusion.trainer import Trainer

    trainer = Trainer(Config.for_recipe("default", width=width, precision=precision))
    steps_of = {
        xla: tf.function(trainer._train_one, jit_compile=xla or None, reduce_retracing=True)
        for xla in xla_options
    }
    return trainer, steps_of, TimeDraw.from_config(trainer.config, trainer.schedule)


def seconds_of(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def gpu_row(row, first, peak):
    """A row of the --gpu table: the cell, its img/s, x the first cell, GFLOP/s, % of peak."""
    cell = f"| {row['batch_size']} | {row['precision']} | {'on' if row['xla'] else 'off'} |"
    if "failed" in row:
        return f"{cell} {row['failed']} | | | |"
    ratio = row["images_per_second"] / first["images_per_second"] if "failed" not in first else 0
    return (
        f"{cell} {row['images_per_second']:.0f} | {ratio:.2f} | {row['gflops']:.0f} | "
        f"{100 * row['gflops'] / peak:.0f}% |"
    )


def gpu_table(rows, peak):
    """The --gpu table's lines: a header and a row per cell."""
    lines = [
        "| batch | precision | XLA | training img/s | × first row | GFLOP/s | "
        "% of float32 matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    return lines + [gpu_row(row, rows[0], peak) for row in rows]


def issues_url():
    """Where to send the table: the issues of the GitHub repository this was cloned from."""
    try:
        origin = subprocess.run(
            ["git", "-C", REPOSITORY, "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    match = re.search(r"github\.com[:/]([^/]+/[^/]+?)(\.git)?/?$", origin)
    return f"https://github.com/{match[1] if match else 'OWNER/tf-diffusion'}/issues"


def gpu_mode(arguments, images, tf):
    """--gpu: refuse without a GPU; else time the cells and print the table to send."""
    from tf_diffusion.config import Config
    from tf_diffusion.hardware import auto_precision, device_defaults, visible_gpus

    gpus = visible_gpus()
    if not gpus:
        print(NO_GPU, file=sys.stderr, flush=True)
        return 2
    started = time.perf_counter()
    tf.get_logger().setLevel("ERROR")  # the retracing warnings of gpu_cells' shared step
    precisions = gpu_precisions(gpus)
    print(f"Timing {len(GPU_BATCH_SIZES) * 4} cells, up to 5 minutes...", file=sys.stderr)
    rows, sampling, peak = gpu_cells(
        tf,
        "/GPU:0",
        GPU_BATCH_SIZES,
        precisions,
        arguments.steps,
        arguments.sample_num,
        images,
        budget_seconds=GPU_BUDGET_SECONDS,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    name, capability = gpus[0]
    chosen = device_defaults("default", gpus[:1])
    config = Config.for_recipe("default")
    print(f"python bench/speed.py {' '.join(sys.argv[1:])}")
    print(f"machine: {machine(tf)}")
    print(
        f"GPU 0: {name}, compute capability {'.'.join(map(str, capability or ('?',)))}; "
        f"--precision auto trains in {auto_precision(gpus)}; a new default run takes "
        f"batch {chosen['batch_size']}, lr {chosen['learning_rate']:g}, XLA "
        f"{'on' if chosen['xla'] else 'off'} (chosen from the literature, not measured); "
        f"TF32 {'on' if tf.config.experimental.tensor_float_32_execution_enabled() else 'off'}"
    )
    print(
        f"default recipe: width {config.width}, {arguments.steps} timed steps per cell after one "
        f"warm-up; tf.matmul 4096x4096 float32 peak: {peak:.0f} GFLOP/s"
    )
    print("\n".join(gpu_table(rows, peak)))
    print(
        f"sampling {arguments.sample_num} images ({config.sampler}, {config.sampling_steps} "
        f"steps, float32): {sampling[0]:.1f} s the first time (tracing included), "
        f"{sampling[1]:.1f} s the second"
    )
    print(f"took {time.perf_counter() - started:.0f} s")
    print(
        f"\nPlease send this: open an issue at {issues_url()} titled 'GPU speed: {name}' "
        "and paste everything above from the command line down."
    )
    return 0


def main():
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    if arguments.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(arguments.intra_op)
    if arguments.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(arguments.inter_op)
    images = np.random.default_rng(0).integers(0, 255, (1000, 32, 32, 3), dtype=np.uint8)
    if arguments.gpu:
        raise SystemExit(gpu_mode(arguments, images, tf))
    if arguments.threads:
        threads_mode(arguments, tf)
        return
    if arguments.only_project_training and arguments.recipes:  # a process of --threads
        threads_run(arguments, images, tf)
        return
    if arguments.recipes:
        recipes_mode(arguments, images, tf)
        return
    from tf_diffusion.config import Config

    config = Config.for_recipe(
        "classic",
        width=arguments.width,
        batch_size=arguments.batch_size,
        precision=arguments.precision,
        xla=arguments.xla,
    )
    if arguments.only_project_training:
        _, train_once, _ = project_side(config, images, arguments, tf)
        seconds = timed(train_once, arguments.steps)
        print(json.dumps({"images_per_second": arguments.batch_size / seconds}))
        return

    reference_config = config.replace(precision="float32", xla=False)
    peak = matmul_peak(tf)
    model, reference_train, reference_sample = reference_side(
        reference_config, images / 127.5 - 1, arguments, np, keras
    )
    flops = forward_flops(model)
    _, project_train, project_sample = project_side(config, images, arguments, tf)

    rows = []

    def measure(name, reference, project, work, unit):
        reference_seconds = timed(reference, 1 if "sample" in name else arguments.steps)
        project_seconds = timed(project, 1 if "sample" in name else arguments.steps)
        rows.append((name, work / reference_seconds, work / project_seconds, unit))

    measure("training", reference_train, project_train, arguments.batch_size, "img/s")
    measure(
        "sample 8 (predict_step)",
        lambda: reference_sample(8),
        lambda: project_sample(8),
        8,
        "img/s",
    )
    measure(
        f"sample {arguments.sample_num}",
        lambda: reference_sample(arguments.sample_num),
        lambda: project_sample(arguments.sample_num),
        arguments.sample_num,
        "img/s",
    )

    training_flops = 3 * flops
    print(f"bench/speed.py  {' '.join(sys.argv[1:])}")
    print(f"machine: {machine(tf)}")
    print(
        f"model: classic U-Net, width {arguments.width}, {model.count_params():,} parameters, "
        f"{flops / 1e9:.2f} GFLOP forward per image, {training_flops / 1e9:.2f} GFLOP per "
        f"training image; batch {arguments.batch_size}; project side: precision "
        f"{arguments.precision}, XLA {arguments.xla}"
    )
    print(f"tf.matmul 4096x4096 float32 peak: {peak:.0f} GFLOP/s")
    print("| measure | reference (classic loop) | tf_diffusion | ratio |")
    print("|---|---|---|---|")
    for name, reference, project, unit in rows:
        print(
            f"| {name} | {reference:.1f} {unit} | {project:.1f} {unit} | "
            f"{project / reference:.2f}x |"
        )
    reference_gflops = rows[0][1] * training_flops / 1e9
    project_gflops = rows[0][2] * training_flops / 1e9
    print(
        f"| training GFLOP/s | {reference_gflops:.0f} "
        f"({100 * reference_gflops / peak:.0f}% of matmul peak) "
        f"| {project_gflops:.0f} ({100 * project_gflops / peak:.0f}% of matmul peak) | |"
    )

    if arguments.cpu_options:
        print("\nThe project's training step under other settings, each in a fresh process:")
        print("| setting | img/s |")
        print("|---|---|")
        variants = [
            ("defaults", {}, []),
            ("TF_ENABLE_ONEDNN_OPTS=0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
            ("intra-op 2, inter-op 1", {}, ["--intra-op", "2", "--inter-op", "1"]),
            ("intra-op 1, inter-op 1", {}, ["--intra-op", "1", "--inter-op", "1"]),
            ("XLA (jit_compile)", {}, ["--xla"]),
        ]
        for name, environment, flags in variants:
            command = [
                sys.executable,
                __file__,
                "--only-project-training",
                "--width",
                str(arguments.width),
                "--batch-size",
                str(arguments.batch_size),
                "--steps",
                str(arguments.steps),
                *flags,
            ]
            result = subprocess.run(
                command, capture_output=True, text=True, env=dict(os.environ, **environment)
            )
            try:
                speed = json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]
                print(f"| {name} | {speed:.1f} |", flush=True)
            except (IndexError, ValueError, KeyError):
                print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1:]} |", flush=True)


if __name__ == "__main__":
    main()
