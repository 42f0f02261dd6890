"""test_model.py holds the independent reference of MDLM's DiT; other test files load it by path,
so that it works whatever pytest's import mode is (each under its own module name)."""

import importlib.util

from tests.helpers.paths import REPO_ROOT


def load_test_model(module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "tests" / "models" / "test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
