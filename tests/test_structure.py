"""The package's import rule: the learner is an actor implementation, so only the code that starts its actors
(`rlpost/cluster/groups.py`) and the learner's own files import from `rlpost/learner/`. Everything the step
exchanges with it (TrainItem, MiniBatch, logprobs) lives in neutral modules, so the arrows run one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rlpost"
ALLOWED = {"cluster/groups.py"}


def imported_modules(path: Path, package_root: Path) -> set[str]:
    """Every absolute module name `path` imports (relative imports resolved), and for `from X import y` also
    `X.y`, since y may be a module (`from rlpost import learner`)."""
    package = path.relative_to(package_root.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def learner_importers(package_root: Path) -> list[str]:
    """The package's files outside the rule's exceptions that import anything under `rlpost.learner`."""
    out = []
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root).as_posix()
        if rel.startswith("learner/") or rel in ALLOWED:
            continue
        mods = imported_modules(path, package_root)
        if any(m == "rlpost.learner" or m.startswith("rlpost.learner.") for m in mods):
            out.append(rel)
    return out


def test_only_the_actor_groups_import_the_learner():
    assert learner_importers(PACKAGE) == [], "import these from rlpost.experience / rlpost.logprobs instead"


def test_the_rule_sees_every_import_form(tmp_path):
    root = tmp_path / "rlpost"
    (root / "rollout").mkdir(parents=True)
    (root / "learner").mkdir()
    (root / "cluster").mkdir()
    forms = ["import rlpost.learner.actor", "from rlpost.learner.actor import TrainItem",
             "from rlpost import learner", "from ..learner import logprobs", "from ..learner.actor import X",
             "def f():\n    from rlpost.learner.logprobs import pack\n"]
    for i, line in enumerate(forms):
        (root / "rollout" / f"m{i}.py").write_text(line + "\n")
    (root / "rollout" / "ok.py").write_text("from rlpost.experience import TrainItem\nfrom . import engine\n")
    (root / "learner" / "actor.py").write_text("from rlpost.learner.logprobs import pack\n")
    (root / "cluster" / "groups.py").write_text("from rlpost.learner.actor import LearnerRank\n")
    assert learner_importers(root) == [f"rollout/m{i}.py" for i in range(len(forms))]


def test_pyproject_license_is_an_spdx_expression():
    """A `license = {text = ...}` table makes every build print setuptools' deprecation warning (PEP 639)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # the first to read the expression
