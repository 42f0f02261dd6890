"""The package's shape: a small top level (subpackages by concept, at most ``MAX_TOP_MODULES``
modules beside them), no import cycles (module-level or inside functions), one docstring per
folder, the version stated once, and tests that mirror the package. Read from the source with ``ast``;
nothing is imported."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

PACKAGE = REPO_ROOT / "mdlm_fast"
COMPILED = {"mdlm_fast._C"}  # the extension: a module without Python imports of its own
# The facade, the version and the build info, with room for a few more; everything else belongs to a
# subpackage named for its concept, so that a module's folder tells what it is about.
MAX_TOP_MODULES = 6
TESTS = REPO_ROOT / "tests"
# The one test folder that is not a part of mdlm_fast: tests of the whole package (layout, install, scripts).
WHOLE_PACKAGE = "package"


def top_level_modules(package: Path = PACKAGE) -> list[str]:
    """The Python modules directly in ``package`` (not in a subpackage), ``__init__`` included."""
    return sorted(p.name for p in package.glob("*.py"))


def test_the_top_level_holds_few_modules():
    found = top_level_modules()
    assert len(found) <= MAX_TOP_MODULES, (
        f"mdlm_fast/ holds {len(found)} modules ({found}); at most {MAX_TOP_MODULES}: move the rest "
        "into the subpackage of their concept"
    )


def test_the_top_level_count_sees_modules_not_subpackages(tmp_path):
    """The check above can fail: modules at the top count, those in subpackages do not."""
    pkg = tmp_path / "mdlm_fast"
    (pkg / "ops").mkdir(parents=True)
    for name in ("__init__.py", "ops/__init__.py", "ops/a.py", "ops/b.py", "ops/c.py"):
        (pkg / name).write_text('"""x"""\n')
    assert top_level_modules(pkg) == ["__init__.py"]
    for i in range(MAX_TOP_MODULES):
        (pkg / f"m{i}.py").write_text('"""x"""\n')
    assert len(top_level_modules(pkg)) == MAX_TOP_MODULES + 1 > MAX_TOP_MODULES


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "assets" in path.relative_to(PACKAGE).parts:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its body (functions included).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of
    ``pkg``. Importing ``a.b.c`` also runs ``a.b``'s ``__init__``: that edge counts too, for
    every package but the root, whose ``__init__`` is the public facade nothing inside imports.
    """
    modules = modules or _modules()
    known = set(modules) | COMPILED
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, modules)
                for a in node.names:
                    full = f"{source}.{a.name}"
                    targets.add(full if full in known else source)
        edges = set()
        for target in targets:
            if not target.startswith("mdlm_fast"):
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            parts = target.split(".")
            for depth in range(2, len(parts)):  # parent packages below the root run first
                edges.add(".".join(parts[:depth]))
            edges.add(target)
        graph[name] = {t for t in edges if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_inside_imports_the_package_root():
    graph = import_graph()
    offenders = sorted(name for name, targets in graph.items() if "mdlm_fast" in targets)
    assert offenders == [], f"these modules import the package root (its facade): {offenders}"


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    """The check above can fail: a late import inside a function closes a cycle it reports."""
    pkg = tmp_path / "mdlm_fast"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""root"""\n')
    (pkg / "sub" / "__init__.py").write_text('"""sub"""\n')
    (pkg / "a.py").write_text("from mdlm_fast.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from mdlm_fast import a\n")
    modules = {
        "mdlm_fast": pkg / "__init__.py",
        "mdlm_fast.sub": pkg / "sub" / "__init__.py",
        "mdlm_fast.a": pkg / "a.py",
        "mdlm_fast.sub.b": pkg / "sub" / "b.py",
    }
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None and set(cycle) == {"mdlm_fast.a", "mdlm_fast.sub.b"}
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(modules)) is None


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_subpackage_says_its_job_and_holds_only_that(folder):
    """One docstring line naming the folder's job; no re-exports (they would run its modules on
    every import of any one of them)."""
    tree = ast.parse((PACKAGE / folder / "__init__.py").read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.splitlines()) == 1, f"mdlm_fast/{folder}/__init__.py needs a one-line docstring"
    assert all(isinstance(n, ast.Expr) for n in tree.body), f"mdlm_fast/{folder}/__init__.py holds code"


def test_the_version_is_stated_once():
    """mdlm_fast/version.py holds the number; pyproject.toml reads it from there and states none."""
    assert re.search(r'^__version__ = "[0-9]+\.[0-9]+\.[0-9]+[^"]*"$', (PACKAGE / "version.py").read_text(), re.M)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mdlm_fast.version.__version__"}


def misplaced_tests(tests: Path = TESTS, package: Path = PACKAGE) -> list[str]:
    """Test files outside a folder that mirrors a subpackage of ``package`` (``tests/sampling/`` for
    ``mdlm_fast/sampling/``, ``tests/models/checkpoints/`` for ``mdlm_fast/models/checkpoints/``) or
    ``tests/package/``, and test files in a folder that is no Python package: without ``__init__.py``
    pytest would import them by their bare name, so two files of one name would collide."""
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        folders = path.relative_to(tests).parent.parts
        mirrored = folders == (WHOLE_PACKAGE,) or (
            len(folders) > 0 and folders[0] != WHOLE_PACKAGE and (package.joinpath(*folders) / "__init__.py").is_file()
        )
        packaged = all(
            (tests.joinpath(*folders[:depth]) / "__init__.py").is_file() for depth in range(len(folders) + 1)
        )
        if not (mirrored and packaged):
            found.append(path.relative_to(tests).as_posix())
    return found


def test_every_test_file_lives_in_the_folder_of_a_package_part():
    assert misplaced_tests() == [], (
        "test files belong in tests/<part>/ for mdlm_fast/<part>/ (or tests/package/ for the whole package), "
        f"each folder with an __init__.py: {misplaced_tests()}"
    )


def test_the_mirror_check_finds_misplaced_tests(tmp_path):
    """The check above can fail: files at the top, in a folder no subpackage has, or in a folder
    without ``__init__.py`` are reported; files in mirrored folders are not."""
    pkg, tests = tmp_path / "mdlm_fast", tmp_path / "tests"
    for folder in ("", "ops", "models", "models/checkpoints"):
        (pkg / folder).mkdir(parents=True, exist_ok=True)
        (pkg / folder / "__init__.py").write_text('"""x"""\n')
    for folder in ("", "ops", "models", "models/checkpoints", "package", "helpers", "unpackaged"):
        (tests / folder).mkdir(parents=True, exist_ok=True)
        if folder != "unpackaged":
            (tests / folder / "__init__.py").write_text("")
    placed = ["ops/test_a.py", "models/checkpoints/test_b.py", "package/test_c.py"]
    for name in placed:
        (tests / name).write_text("")
    assert misplaced_tests(tests, pkg) == []
    (pkg / "unpackaged").mkdir()
    (pkg / "unpackaged" / "__init__.py").write_text('"""x"""\n')
    misplaced = ["test_top.py", "helpers/test_d.py", "unpackaged/test_e.py"]
    for name in misplaced:
        (tests / name).write_text("")
    assert misplaced_tests(tests, pkg) == sorted(misplaced)
