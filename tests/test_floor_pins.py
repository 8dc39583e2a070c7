"""scripts/floor_pins.py: the floor test's pins, read from pyproject.toml."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

_PATH = pathlib.Path(__file__).parent.parent / "scripts" / "floor_pins.py"

# A `[project]` table in the forms pyproject.toml uses: a plain floor, a
# floor with a marker, a floor with an upper bound, an extra that raises a
# core floor, and requirements without a floor.
PROJECT = {
    "dependencies": ["keras>=3.12"],
    "optional-dependencies": {
        "jax": ["jax>=0.5.1", "jaxlib>=0.5.1"],
        "torch": ["torch>=2.13", "keras>=3.15"],
        "tensorflow": [
            "tensorflow-cpu>=2.16.2; sys_platform != 'darwin'",
            "tensorflow>=2.16.2; sys_platform == 'darwin'",
        ],
        "tf-keras": ["tf-keras~=2.21.0"],
        "test": ["pytest>=7,<10", "Scikit_Learn>=1.3"],
    },
}


@pytest.fixture(scope="module")
def floor_pins():
    spec = importlib.util.spec_from_file_location("floor_pins", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_core_and_extra_floors(floor_pins):
    pins = floor_pins.pins(["keras", "jax", "jaxlib"], PROJECT, ["jax"])
    assert pins == ["keras==3.12", "jax==0.5.1", "jaxlib==0.5.1"]


def test_an_extra_raises_the_core_floor(floor_pins):
    pins = floor_pins.pins(["keras", "torch"], PROJECT, ["torch"])
    assert pins == ["keras==3.15", "torch==2.13"]


def test_versions_compare_as_releases_not_text(floor_pins):
    project = {"dependencies": ["keras>=3.9"]}
    project["optional-dependencies"] = {"new": ["keras>=3.12"]}
    assert floor_pins.pins(["keras"], project, ["new"]) == ["keras==3.12"]


def test_markers_bounds_and_spelling(floor_pins):
    extras = ["tensorflow", "test"]
    names = ["tensorflow-cpu", "pytest", "scikit-learn"]
    assert floor_pins.pins(names, PROJECT, extras) == [
        "tensorflow-cpu==2.16.2",
        "pytest==7",
        "scikit-learn==1.3",
    ]


def test_a_package_without_a_floor_is_refused(floor_pins):
    with pytest.raises(ValueError, match="name='tf-keras'"):
        floor_pins.pins(["tf-keras"], PROJECT, ["tf-keras"])
    # The floor of an extra not asked for does not count.
    with pytest.raises(ValueError, match="name='jax'"):
        floor_pins.pins(["jax"], PROJECT)


def test_an_unknown_extra_is_refused(floor_pins):
    with pytest.raises(ValueError, match="Received: extra='nope'"):
        floor_pins.pins(["keras"], PROJECT, ["nope"])


def test_the_command_pins_what_pyproject_toml_declares(floor_pins):
    result = subprocess.run(
        [sys.executable, str(_PATH), "--extra", "torch", "keras", "torch"],
        capture_output=True,
        text=True,
        check=True,
    )
    keras_pin, torch_pin = result.stdout.split()
    with open(floor_pins.PYPROJECT, "rb") as file:
        torch_extra = floor_pins.tomllib.load(file)["project"][
            "optional-dependencies"
        ]["torch"]
    assert keras_pin.replace("==", ">=") in torch_extra
    assert torch_pin.replace("==", ">=") in torch_extra
