"""The rooms of the house and the direction of their imports.

``lambda_fn`` is split by job: ``contract`` (plain facts) < ``storage`` < ``vision`` < ``search`` and
``collection``, which never import each other. A module may import its own room or a room below it.
Tests and benchmarks share helpers through ``support``, which imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

RANK = {"contract": 0, "storage": 1, "vision": 2, "search": 3, "collection": 3}


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def _room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lambda_fn" and parts[1] in RANK else None


def test_every_service_module_lives_in_a_room():
    loose = [p.name for p in (REPO_ROOT / "lambda_fn").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the rooms {sorted(RANK)}: {loose}"


@pytest.mark.parametrize("room", sorted(RANK))
def test_a_room_imports_only_itself_and_the_rooms_below(room):
    wrong = []
    for path in _sources(f"lambda_fn/{room}"):
        for name in _imports(path):
            other = _room(name)
            if other and other != room and RANK[other] >= RANK[room]:
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_contract_needs_no_boto3_torch_or_pil():
    heavy = ("boto3", "botocore", "torch", "PIL", "annoy")
    wrong = [
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in _sources("lambda_fn/contract")
        for name in _imports(path)
        if name.split(".")[0] in heavy
    ]
    assert not wrong, "\n".join(wrong)


def _importers(folder: str, top: str, skip: str | None = None) -> list[str]:
    """Modules under ``folder`` (except under ``skip``) that import the top-level package ``top``."""
    return [
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in _sources(folder)
        if skip is None or not path.is_relative_to(REPO_ROOT / skip)
        for name in _imports(path)
        if name.split(".")[0] == top
    ]


def test_only_the_benchmarks_own_tests_import_bench():
    wrong = _importers("tests", "bench", skip="tests/bench")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("top", ["tests", "bench"])
def test_support_imports_neither_tests_nor_bench(top):
    wrong = _importers("support", top)
    assert not wrong, "\n".join(wrong)
