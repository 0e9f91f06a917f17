#!/usr/bin/env python3
"""Do two commits train alike? The first losses of a recipe from each, side by side.

    python bench/same_losses.py --base 4a79aa5 --steps 100 --data cars.npz

For each of `--recipes`, trains the recipe (its full size, its precision on this machine,
one process per commit) for `--steps` steps from the same seed on the same images, and
prints a table: how many losses are identical, and the largest relative difference. A
refactoring that keeps the arithmetic shows 100 % identical; one that changes the order of
floating-point operations shows differences that grow with the steps, fastest in bfloat16.
Each commit is checked out with `git worktree` into a temporary folder.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run inside a checkout of one commit: print the recipe's first losses as JSON.
TRAIN = r"""
import inspect, json, os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
from tf_diffusion.config import Config
from tf_diffusion.data import make_dataset
recipe, steps, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    from tf_diffusion.hardware import use_cores
    from tf_diffusion.trainer import Trainer
except ImportError:  # before training.py was split
    from tf_diffusion.training import Trainer, use_cores
config = Config.for_recipe(recipe)
use_cores(config.op_threads)
trainer = Trainer(config)
if "noise_keys" in inspect.signature(make_dataset).parameters:
    from tf_diffusion.diffusion import TimeDraw
    draw, keys = TimeDraw.from_config(config, trainer.schedule), {"noise_keys": config.noise_keys}
else:  # before diffusion.py
    from tf_diffusion.schedule import LevelDraw
    draw, keys = LevelDraw.from_config(config, trainer.schedule), {}
images = np.load(data)["x"]
batches = iter(make_dataset(images, config.batch_size, config.timesteps, config.seed,
                            draw=draw, flip=config.flip, **keys))
losses = [float(trainer.train_one(*next(batches))) for _ in range(steps)]
print(json.dumps({"precision": trainer.precision, "losses": losses}))
"""


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--head", default="HEAD", help="the commit to check (default HEAD)")
    parser.add_argument("--recipes", default="default,v2,v1,classic")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--data", required=True, help="an .npz of training images (key x)")
    return parser.parse_args()


def losses_at(commit, recipe, steps, data, folder):
    tree = os.path.join(folder, commit)
    if not os.path.isdir(tree):
        subprocess.run(
            ["git", "-C", REPOSITORY, "worktree", "add", "--detach", tree, commit],
            check=True,
            capture_output=True,
        )
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", TRAIN, recipe, str(steps), os.path.abspath(data)],
        cwd=tree,
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    arguments = parse_arguments()
    print(f"python {' '.join(sys.argv)}")
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| recipe | precision | steps | identical losses | largest relative difference |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="same-losses-") as folder:
        try:
            for recipe in arguments.recipes.split(","):
                base, head = (
                    losses_at(commit, recipe, arguments.steps, arguments.data, folder)
                    for commit in (arguments.base, arguments.head)
                )
                old, new = np.array(base["losses"]), np.array(head["losses"])
                identical = int((old == new).sum())
                largest = float(np.max(np.abs(old - new) / np.abs(old)))
                print(
                    f"| {recipe} | {head['precision']} | {len(new)} | "
                    f"{identical}/{len(new)} | {largest:.2e} |",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", REPOSITORY, "worktree", "prune"], check=False)


if __name__ == "__main__":
    main()
