"""The suite's optional dependencies live in one place: the `test` extra of pyproject.toml, which
requirements-dev.txt mirrors (with the `lint` extra's tools); every optional module a test imports
is in it."""

import re

import pytest

from tests.helpers.paths import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

# import name -> distribution name, for the optional modules the tests and benchmarks import
OPTIONAL = {
    "hypothesis": "hypothesis",
    "matplotlib": "matplotlib",
    "pytest_benchmark": "pytest-benchmark",
    "pytest": "pytest",
}


def _names(lines):
    return {
        re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
        for line in lines
        if line.strip() and not line.strip().startswith(("#", "-"))
    }


def test_requirements_dev_is_the_test_and_lint_extras():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _names((REPO_ROOT / "requirements-dev.txt").read_text().splitlines()) == _names(
        extras["test"] + extras["lint"]
    )


def test_every_optional_module_the_tests_import_is_in_the_test_extra():
    extra = _names(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    )
    used = set()
    for file in [*(REPO_ROOT / "tests").rglob("*.py"), *(REPO_ROOT / "benchmarks").glob("test_*.py")]:
        text = file.read_text()
        used |= {
            name for name in OPTIONAL if re.search(rf"^\s*(import|from) {name}\b|importorskip\(\"{name}\"", text, re.M)
        }
    assert {"hypothesis", "matplotlib", "pytest_benchmark"} <= used  # the scan sees them
    assert {OPTIONAL[name] for name in used} <= extra
