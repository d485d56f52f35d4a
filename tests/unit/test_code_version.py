"""afinar.code_version: which library modules a rule script runs, and a digest that follows them."""

from __future__ import annotations

from pathlib import Path

from afinar.code_version import library_digest, library_modules

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _names(script: str) -> set[str]:
    return {p.relative_to(SCRIPTS / "afinar").as_posix() for p in library_modules(SCRIPTS / script, SCRIPTS)}


def test_train_script_runs_training_and_its_imports_not_evaluation() -> None:
    names = _names("train.py")
    # direct import, a module imported inside a function, the package __init__ files on the way
    assert {
        "train/training.py",
        "gpu_slots.py",
        "train/callbacks.py",
        "train/__init__.py",
        "__init__.py",
    } <= names
    assert "logs.py" in names  # imported inside errors.run_rule
    assert not {n for n in names if n.startswith(("evaluate/", "report/", "predict/"))}


def test_evaluate_script_runs_evaluation() -> None:
    assert "evaluate/evaluation.py" in _names("evaluate.py")
    assert "train/training.py" not in _names("evaluate.py")


def _tree(root: Path) -> Path:
    (root / "afinar" / "sub").mkdir(parents=True)
    (root / "afinar" / "__init__.py").write_text("")
    (root / "afinar" / "sub" / "__init__.py").write_text("")
    (root / "afinar" / "sub" / "a.py").write_text("def f():\n    from afinar import b\n")
    (root / "afinar" / "b.py").write_text("X = 1\n")
    (root / "afinar" / "unused.py").write_text("Y = 2\n")
    script = root / "rule.py"
    script.write_text("from afinar.sub.a import f\n")
    return script


def test_digest_changes_with_an_imported_module_only(tmp_path: Path) -> None:
    script = _tree(tmp_path)
    before = library_digest(script, tmp_path)
    assert library_digest(script, tmp_path) == before  # deterministic
    (tmp_path / "afinar" / "unused.py").write_text("Y = 3\n")
    assert library_digest(script, tmp_path) == before
    (tmp_path / "afinar" / "b.py").write_text("X = 2\n")  # reached through a function-level import
    assert library_digest(script, tmp_path) != before


def test_digest_does_not_depend_on_the_checkout_folder(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert library_digest(_tree(one), one) == library_digest(_tree(two), two)
