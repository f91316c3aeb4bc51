"""The architecture is executable: the import contracts in pyproject.toml hold, a wrong
arrow breaks them with a message, and the core needs nothing beyond numpy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts over the package found in
    ``package_parent`` (first on the path)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(package_parent)},
    )


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a plain tree (its links to the job's folders followed), to break."""
    parent = tmp_path_factory.mktemp("tree")
    shutil.copytree(
        ROOT / "flowlearn",
        parent / "flowlearn",
        ignore=shutil.ignore_patterns("__pycache__", "java"),
    )
    return parent


@pytest.mark.parametrize(
    ("module", "wrong_import", "broken"),
    [
        ("core/linear.py", "import flowlearn.serving.app", "Layers"),
        ("core/codec.py", "import redis", "The core imports no service client"),
        ("contracts/records.py", "from pyflink.common import Row", "Only the job layer"),
        ("conf/settings.py", "import flowlearn.core.codec", "Settings import"),
        ("operators/parse.py", "import flowlearn.jobs.online_learning", "Layers"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    package_copy: Path, module: str, wrong_import: str, broken: str
) -> None:
    path = package_copy / "flowlearn" / module
    original = path.read_text()
    path.write_text(f"{original}\n{wrong_import}  # deliberately wrong\n")
    try:
        result = lint_imports(package_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section, result.stdout
    assert module.replace("/", ".").removesuffix(".py") in broken_section


def test_the_core_imports_only_numpy_and_the_standard_library() -> None:
    """And numba, in the trees' compiled loops alone (which the tree modules import on
    first use)."""
    graph = grimp.build_graph("flowlearn", include_external_packages=True)
    core = {m for m in graph.modules if m == "flowlearn.core" or m.startswith("flowlearn.core.")}
    imported = {i for m in core for i in graph.find_modules_directly_imported_by(m)}
    outside = {i.split(".")[0] for i in imported if not i.startswith("flowlearn.core")}
    assert outside - set(sys.stdlib_module_names) == {"numpy", "numba"}
    users = {m for m in core if "numba" in graph.find_modules_directly_imported_by(m)}
    assert users == {"flowlearn.core.tree_kernels"}
