"""The install: requirements.txt is the runtime alone, and pyproject.toml says the same."""

import os

from conftest import REPOSITORY

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def requirements(name):
    """The requirement lines of a requirements file, without comments and `-r` includes."""
    with open(os.path.join(REPOSITORY, name), encoding="utf-8") as file:
        lines = [line.split("#")[0].strip() for line in file]
    return [line for line in lines if line and not line.startswith("-r")]


def project():
    with open(os.path.join(REPOSITORY, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)["project"]


def test_pyproject_dependencies_are_requirements_txt():
    assert project()["dependencies"] == requirements("requirements.txt")


def test_the_dev_extra_is_requirements_dev_txt_and_holds_the_test_tools():
    dev = requirements("requirements-dev.txt")
    assert project()["optional-dependencies"]["dev"] == dev
    with open(os.path.join(REPOSITORY, "requirements-dev.txt"), encoding="utf-8") as file:
        assert "-r requirements.txt" in file.read().splitlines()
    runtime = {line.split(">")[0].lower() for line in requirements("requirements.txt")}
    assert {"pytest", "pytest-xdist", "nbclient", "ipykernel"} <= {
        line.split(">")[0].lower() for line in dev
    }
    assert not runtime & {"pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "psutil"}


def test_every_requirement_has_a_lower_bound():
    for name in ("requirements.txt", "requirements-dev.txt"):
        assert all(">=" in line for line in requirements(name)), name
