"""The README's flag tables, `train.py --help` and `Config` say the same: each setting's help
is written once, in its `Config` field, and the tables are generated from the scripts' parsers."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from conftest import REPOSITORY

from tf_diffusion import cli
from tf_diffusion.config import RECIPES, Config


def readme_table(script):
    with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    found = re.search(
        rf"<!-- BEGIN {script} flags[^\n]*-->\n(.*?)<!-- END {script} flags", readme, re.S
    )
    assert found, f"README.md has no generated table of {script}'s flags"
    return found[1].strip()


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
def test_the_readme_flag_tables_are_the_generated_ones(script):
    parser = (cli.train_parser if script == "train.py" else cli.predict_parser)(None)
    assert readme_table(script) == cli.markdown(parser), (
        f"README.md's {script} table is stale: paste the output of "
        f"python -m tf_diffusion.cli --markdown {script[:-3]}"
    )


def flag_settings():
    return [field for field in dataclasses.fields(Config) if field.metadata["flag"]]


def test_every_setting_with_a_flag_is_in_the_readme_with_its_default():
    rows = {row.split("`")[1].split()[0]: row for row in readme_table("train.py").splitlines()[2:]}
    default = Config()
    for field in flag_settings():
        row = rows[cli.flag(field.name)]
        assert f"(default {cli.show(getattr(default, field.name))}" in row, row
        for recipe in RECIPES:
            value = getattr(Config.for_recipe(recipe), field.name)
            assert (
                recipe == "default"
                or value == getattr(default, field.name)
                or (f"{recipe} {cli.show(value)}" in row)
            ), (recipe, row)
    assert set(rows) == {cli.flag(f.name) for f in flag_settings()} | {
        "--recipe",
        "--weights-dir",
        "--stop-at",
        "--max-minutes",
        "--mixed-precision",
        "--fresh",
        "--quiet",
    }


def test_train_help_gives_each_setting_its_config_help_and_default():
    result = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "1000"},  # one line a flag, so no word is broken
        check=True,
    )
    help_text = " ".join(result.stdout.split())
    for field in flag_settings():
        description = re.sub(r"`(\w+)`", lambda match: cli.flag(match[1]), field.metadata["help"])
        assert f"{cli.flag(field.name)}" in help_text
        assert f"{description} ({cli.describe_default(field.name)})" in help_text, field.name
