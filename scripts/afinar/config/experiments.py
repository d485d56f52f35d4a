"""Experiments: the named overrides of ``experimentos`` merged over the shared sections."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from afinar.builtin_models import resolve_builtin as builtin_model_folder
from afinar.config.aliases import _translate
from afinar.config.checks import _check_semantics
from afinar.config.common import _as_mapping, _deep_merge, _kind, _Problems
from afinar.config.schema import _check_unknown, _coerce, _validate_schema

EXPERIMENT_SECTIONS = ("modelo", "treinamento", "lora", "predicao")
#: what an experiment id (the ``{exp}`` wildcard, the folder under results/) is made of
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def experiments(cfg: dict) -> dict[str, dict]:
    """Per experiment id, the merged {modelo, treinamento, lora, predicao} of a normalized config.

    Without ``experimentos`` there is one experiment named after ``modelo.saida``'s last component.
    The keys are the safe ids of :func:`experiment_id` (``x (direto)`` → ``x_direto``): the ``{exp}``
    wildcard and the folder under results/; :func:`experiment_names` maps them back.
    """
    base = {section: cfg[section] for section in EXPERIMENT_SECTIONS}
    overrides = cfg.get("experimentos") or {}
    if not overrides:
        exps = {experiment_id(default_experiment_name(cfg)): copy.deepcopy(base)}
    else:
        exps = {experiment_id(name): _deep_merge(base, override) for name, override in overrides.items()}
    for exp in exps.values():  # built-in names (smollm2-135m-instruct) → the folder a rule builds
        exp["modelo"]["base"] = builtin_model_folder(str(exp["modelo"]["base"]))
    return exps


def experiment_names(cfg: dict) -> dict[str, str]:
    """Experiment id → the name the user wrote (equal unless the name needed a safe folder name)."""
    names = list(cfg.get("experimentos") or {}) or [default_experiment_name(cfg)]
    return {experiment_id(str(name)): str(name) for name in names}


def experiment_id(name: str) -> str:
    """A folder-safe id for any experiment name: runs of other characters become one ``_``.

    ``Qwen2.5-1.5B-Instruct(b)`` → ``Qwen2.5-1.5B-Instruct_b``, ``x (direto)`` → ``x_direto``. Leading
    dots and dashes go (a hidden folder, or a name read as a command-line option).
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("_")
    return safe.lstrip(".-")


def name_problem(name: str, where: str) -> str | None:
    """Why ``name`` cannot name an experiment, or None. Any name a folder can have is accepted; refused
    are only names that would escape results/ or take one of its own folders (data, logs, ...)."""
    from afinar.layout import RESERVED

    shown = repr(name)
    if name in (".", "..") or "/" in name or "\\" in name:
        return f"{where}: the experiment name {shown} would write outside results/<name>/ — drop '/', '\\' and '..'"
    if any(ord(c) < 32 for c in name):
        return f"{where}: the experiment name {shown} holds a control character — rename it"
    ident = experiment_id(name)
    if not ident:
        return f"{where}: the experiment name {shown} has no letter or digit — give it one"
    if ident.lower() in RESERVED:
        return (
            f"{where}: the experiment name {shown} is one of results/'s own folders "
            f"({', '.join(sorted(RESERVED))}) — rename it"
        )
    return None


def default_experiment_name(cfg: dict) -> str:
    """Last path component of ``modelo.saida``, or ``modelo`` when it is empty."""
    saida = str(cfg.get("modelo", {}).get("saida") or "").strip().rstrip("/\\")
    name = Path(saida).name if saida else ""
    return name if name not in ("", ".", "..") else "modelo"


def _experiment_overrides(cfg: dict, overrides: Any, schema: dict, found: _Problems) -> dict:
    """Validate ``experimentos`` and return the normalized overrides (aliases translated, no defaults)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        found.add(
            f"experimentos: got {_kind(overrides)} — a mapping of name → overrides of {', '.join(EXPERIMENT_SECTIONS)}"
        )
        return {}
    base = {section: cfg[section] for section in EXPERIMENT_SECTIONS}
    result: dict[str, dict] = {}
    ids: dict[str, str] = {}
    for name, override in overrides.items():
        name = str(name)
        where = f"experimentos.{name}"
        problem = name_problem(name, where)
        if problem:
            found.add(problem)
            continue
        ident = experiment_id(name)
        if ident.lower() in ids:
            found.add(
                f"{where}: the experiments {ids[ident.lower()]!r} and {name!r} would share the folder results/{ident}/ "
                "— rename one of them"
            )
            continue
        ids[ident.lower()] = name
        if override is None:
            override = {}
        if not isinstance(override, dict):
            found.add(
                f"{where}: got {_kind(override)} — a mapping of {', '.join(EXPERIMENT_SECTIONS)} overrides"
            )
            continue
        bad = [key for key in override if key not in EXPERIMENT_SECTIONS]
        if bad:
            found.add(
                f"{where}.{bad[0]}: experiments may only override {', '.join(EXPERIMENT_SECTIONS)} — data sections are "
                "shared by all experiments; move it to the top level"
            )
            continue
        override = {k: _as_mapping(v, f"{where}.{k}", found) for k, v in copy.deepcopy(override).items()}
        n_before = len(found.items)
        _translate(override, f"{where}.", found)
        _check_unknown(override, schema, f"{where}.", found, top=False)
        _coerce(override, schema, f"{where}.", found)
        if len(found.items) > n_before:
            continue
        merged = {**copy.deepcopy(cfg), **_deep_merge(base, override)}
        merged.pop("experimentos", None)
        _validate_schema(merged, f"{where}.", found)
        _check_semantics(merged, f"{where}.", found)
        result[name] = override
    return result
