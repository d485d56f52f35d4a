"""Which library modules a rule script runs, and one digest of their source.

Snakemake reruns a job when its own ``script:`` file changes, but not when a module that script
imports changes: a fixed bug in ``afinar/train/training.py`` would leave every adapter stale without a
word. ``rules/common.smk`` therefore gives each rule a ``codigo`` param: the digest of every
``afinar`` module its script imports, directly or through other ``afinar`` modules. Only those modules
count, so editing ``evaluate/evaluation.py`` reruns evaluate (and what depends on its output) while
train, whose script never imports it, stays up to date.

Imports are found by reading the source (``ast``), not by importing it: the workflow must parse in an
environment without torch, and an import inside a function body is run code as much as a top-level one.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "afinar"


def module_file(scripts_dir: Path, dotted: str) -> Path | None:
    """The source file of ``afinar.x.y`` under ``scripts_dir`` (a module or a package's ``__init__``)."""
    base = scripts_dir.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST) -> set[str]:
    """Every ``afinar`` module named by an import in ``tree``: ``from afinar.a import b`` yields
    ``afinar.a`` and ``afinar.a.b`` (b may be a submodule or a name; non-modules are dropped later)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == PACKAGE:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _with_parents(dotted: str) -> list[str]:
    """``afinar.train.training`` → ``afinar``, ``afinar.train``, ``afinar.train.training``: importing a
    module runs its packages' ``__init__`` files too."""
    parts = dotted.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def library_modules(script: str | Path, scripts_dir: str | Path) -> list[Path]:
    """Every ``afinar`` source file that ``script`` imports, transitively, sorted."""
    scripts_dir = Path(scripts_dir)
    found: set[Path] = set()
    todo = [Path(script)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(tree):
            for dotted in _with_parents(name):
                target = module_file(scripts_dir, dotted)
                if target is not None and target not in found:
                    found.add(target)
                    todo.append(target)
    return sorted(found)


def library_digest(script: str | Path, scripts_dir: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the paths and bytes of the modules ``script`` imports.

    Paths relative to ``scripts_dir`` go into the digest, so the same code in another checkout gives the
    same digest and moving a module counts as a change."""
    scripts_dir = Path(scripts_dir)
    h = hashlib.sha256()
    for path in library_modules(script, scripts_dir):
        h.update(path.relative_to(scripts_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
