"""The Keras, TensorFlow and JAX versions pyproject.toml claims, tested at both ends.

The suite runs on the newest versions the project accepts: what
`pip install -e ".[test]"` resolves (checked here to be the last minor release
inside each range). This module builds a second environment, in a temporary
directory, with the oldest ones (`OLDEST`, pinned exactly: each the floor of
its range in pyproject.toml, checked here too) and the project's other
dependencies as pip resolves them beside those, and runs the exactness
subset there: every Keras internal (tests/test_keras_contract.py), the
in-process resume tests, and SIGKILLed subprocess resumes compared bit for bit
on TensorFlow and JAX (PyTorch is left out of the old environment: PyPI's
torch is the multi-GB CUDA build). The build needs PyPI, like the suite's own
install; `--no-compile` spares byte-compiling all of TensorFlow (what is
imported compiles as it loads).
"""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import TESTS, script_env

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

pytestmark = pytest.mark.xdist_group("versions")

ROOT = TESTS.parent
# The oldest versions pyproject.toml accepts, with the jaxlib of that JAX.
OLDEST = {"keras": "3.11.0", "tensorflow": "2.18.0", "jax": "0.4.36", "jaxlib": "0.4.36"}
# Where each range is claimed: (section of pyproject.toml, requirement name).
CLAIMS = {
    "keras": ("dependencies", "keras"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "jax": ("jax", "jax"),
}
TEST_TOOLS = ["pytest>=8,<9.2"]  # as the [test] extra pins it

# What runs under the oldest versions. Each mid-epoch case brings its own
# uninterrupted reference run (the control reuses the first one's): 14
# training processes, most of this module's cost.
EXACT_RESUME = [
    "test_mid_epoch_sigkill_resumes_bit_identical[tensorflow-numpy-plateau]",
    "test_mid_epoch_sigkill_resumes_bit_identical[tensorflow-pydataset-plateau]",
    "test_mid_epoch_sigkill_resumes_bit_identical[tensorflow-tfdata-schedule]",
    "test_mid_epoch_sigkill_resumes_bit_identical[jax-numpy-plateau]",
    "test_without_rng_capture_the_resume_differs[tensorflow]",
]
SUBSET = {
    "test_keras_contract": ["tests/test_keras_contract.py"],
    "test_callbacks": ["tests/test_callbacks.py"],
    "test_restore": ["tests/test_restore.py"],
    "test_exact_resume": [f"tests/test_exact_resume.py::{t}" for t in EXACT_RESUME],
}
BUILD_TIMEOUT, RUN_TIMEOUT = 900, 1800


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _claim(package: str) -> Requirement:
    section, name = CLAIMS[package]
    project = _pyproject()["project"]
    listed = project["dependencies"] if section == "dependencies" else None
    if listed is None:
        listed = project["optional-dependencies"][section]
    (requirement,) = [r for r in map(Requirement, listed) if r.name == name]
    return requirement


@pytest.mark.parametrize("package", sorted(CLAIMS))
def test_oldest_pins_are_the_claimed_floors(package):
    specifier = _claim(package).specifier
    floors = [Version(s.version) for s in specifier if s.operator == ">="]
    assert floors == [Version(OLDEST[package])], (
        f"pyproject.toml claims {package}{specifier}; OLDEST pins {OLDEST[package]}. "
        "Test the floor you claim: change one to match the other."
    )


@pytest.mark.parametrize("package", ["keras", "tensorflow"])
def test_this_environment_has_the_newest_claimed_minor(package):
    """The suite itself is the newest-version run: its Keras and TensorFlow are the
    last minor releases the ranges accept (raise a cap only with an environment that has it)."""
    import tensorflow as tf

    installed = Version({"keras": keras.version(), "tensorflow": tf.__version__}[package])
    specifier = _claim(package).specifier
    major, minor = installed.release[:2]
    assert installed in specifier
    assert Version(f"{major}.{minor + 1}.0") not in specifier, (
        f"pyproject.toml accepts {package}{specifier}, but the suite runs {installed}: "
        "the newest claimed minor release is untested."
    )


def _requirements() -> list[str]:
    """The project's dependencies, with Keras, TensorFlow and JAX at OLDEST."""
    pinned = [f"{name}=={version}" for name, version in OLDEST.items()]
    others = [d for d in _pyproject()["project"]["dependencies"] if Requirement(d).name != "keras"]
    return pinned + others + TEST_TOOLS


@pytest.fixture(scope="module")
def oldest_results(tmp_path_factory):
    """Builds the oldest-versions environment and runs SUBSET in it, once.

    Returns `{module: {test name: outcome}}` from the run's JUnit report.
    """
    root = tmp_path_factory.mktemp("oldest")
    venv = root / "venv"
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    _run([sys.executable, "-m", "pip", "--python", str(python), "install",
          "--no-cache-dir", "--no-compile", "--quiet", *_requirements()],
         timeout=BUILD_TIMEOUT)  # fmt: skip
    installed = _run(
        [str(python), "-c", "import keras, tensorflow, jax; "
         "print(keras.version(), tensorflow.__version__, jax.__version__)"],
        timeout=120,
    ).stdout.split()  # fmt: skip
    assert installed == [OLDEST["keras"], OLDEST["tensorflow"], OLDEST["jax"]]
    report = root / "report.xml"
    env = script_env("tensorflow")
    env["KERAS_RESUME_CONTRACT_BACKENDS"] = "tensorflow,jax"
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
         "-W", "ignore::pytest.PytestUnknownMarkWarning",  # xdist_group, without xdist
         "-W", "ignore::pytest.PytestUnknownMarkWarning",  # xdist_group, without xdist
         f"--basetemp={root / 'tmp'}", f"--junitxml={report}",
         *[node for nodes in SUBSET.values() for node in nodes]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    output = f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert report.exists(), f"pytest under the oldest versions did not run:\n{output}"
    return _outcomes(report), output


def _run(command, timeout):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command[:6]} failed:\n{proc.stderr[-4000:]}"
    return proc


def _outcomes(report: Path) -> dict:
    outcomes: dict = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        verdict = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        outcomes.setdefault(module, {})[case.get("name")] = verdict
    return outcomes


@pytest.mark.parametrize("module", sorted(SUBSET))
def test_oldest_claimed_versions_pass(oldest_results, module):
    outcomes, output = oldest_results
    ran = outcomes.get(module, {})
    if module == "test_exact_resume":
        assert sorted(ran) == sorted(EXACT_RESUME), output
    assert ran, f"no test of {module} ran under {OLDEST}:\n{output}"
    bad = {name: verdict for name, verdict in ran.items() if verdict != "passed"}
    assert bad == {}, f"under {OLDEST}, {module}: {bad}\n{output}"
