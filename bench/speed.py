#!/usr/bin/env python3
"""Training and sampling speed: the classic recipe's own loop against tf_diffusion, side by side.

    python bench/speed.py                       # classic width 128, batch 128
    python bench/speed.py --cpu-options         # also: oneDNN off, thread settings, XLA
    python bench/speed.py --precision mixed_float16 --xla   # GPU options, the project's side
    python bench/speed.py --recipes v1,default  # each recipe's training step, % of peak
    python bench/speed.py --recipes default --precision float32,mixed_bfloat16  # and each policy

Both sides use the same model width and batch, in one process:
(a) the reference: the classic notebook's loop, `model.train_on_batch` on
    numpy noise and sampling with `model.predict` once per step;
(b) tf_diffusion: the compiled `train_one` fed by tf.data, and the compiled
    sampler (one `tf.function` for the whole denoising loop).
The achieved GFLOP/s come from the model's multiply-adds counted layer by
layer (a training step is taken as 3x the forward pass), against a 4096^2
float32 `tf.matmul` measured in the same run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per side")
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
    parser.add_argument("--only-project-training", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intra-op", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inter-op", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


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


def project_side(config, images, arguments, tf):
    from tf_diffusion.data import make_dataset
    from tf_diffusion.sampling import Sampler
    from tf_diffusion.training import Trainer

    trainer = Trainer(config)
    iterator = iter(make_dataset(images, config.batch_size, config.timesteps, config.seed))

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
