"""Read, translate and validate an Afinar config into one normalized dict.

Why this module exists: the original tool parsed its YAML leniently and silently ignored what it did not
understand (unknown keys, ``num_train_epochs``, ``lora.dropout``, LoRA keys under ``treinamento`` ...), so
users trained models with settings they never asked for. Here every key is either understood or
rejected with a one-line message that names it, and the rest of the code only ever sees the canonical
shape documented in docs/architecture.md (every key present, defaults filled, no aliases).

The pipeline is: seed aliases and value forms → unknown keys (with "did you mean") → type coercion of
YAML/--config strings → JSON Schema (config/schema.yaml, through ``snakemake.utils.validate``, which also
fills the defaults) → checks a schema cannot express → experiments. ``load_config`` stops at the first
problem; ``problems`` collects all of them for ``python -m afinar validate``. Path existence and the
encryption variable are separate (``check_paths``, ``check_env``) because a Snakefile must parse before
the files its rules produce exist.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from afinar.config.aliases import SPLIT_NAMES, _infer_input_type, _translate, parse_proporcao
from afinar.config.checks import _check_semantics, check_env, check_paths
from afinar.config.common import _as_mapping, _flatten, _get, _kind, _Problems
from afinar.config.experiments import (
    EXPERIMENT_NAME,
    EXPERIMENT_SECTIONS,
    _experiment_overrides,
    default_experiment_name,
    experiment_id,
    experiment_names,
    experiments,
    name_problem,
)
from afinar.config.reading import SCHEMA_PATH, load_schema, read_yaml
from afinar.config.schema import (
    _check_unknown,
    _coerce,
    _fill_missing_defaults,
    _finish,
    _validate_schema,
    suggest_key,
)
from afinar.layout import SPLITS

__all__ = [
    "EXPERIMENT_NAME",
    "EXPERIMENT_SECTIONS",
    "SCHEMA_PATH",
    "SPLITS",
    "SPLIT_NAMES",
    "check_env",
    "check_paths",
    "default_experiment_name",
    "experiment_id",
    "experiment_names",
    "experiments",
    "load_config",
    "load_schema",
    "parse_proporcao",
    "problems",
    "read_yaml",
    "suggest_key",
    "summary",
]

log = logging.getLogger("afinar.config")

# Paths that load_config(base_dir=...) re-roots; modelo.base is excluded (it may be a Hub id).
PATH_KEYS = (
    ("pastas", "predicao", "pasta"),
    ("pastas", "entrada", "pasta"),
    ("pastas", "entrada", "prompt_template"),
    ("pastas", "entrada", "dataframe"),
    ("pastas", "divisao", "arquivo"),
    ("dataset", "train_file"),
    ("dataset", "eval_file"),
    ("dataset", "test_file"),
    ("dataset", "prompt_template"),
    ("exportacao", "llama_cpp"),
)


def load_config(raw: dict, base_dir: str | Path = ".") -> dict:
    """Return the normalized config (see docs/architecture.md) or raise AfinarError on the first problem.

    ``raw`` is the parsed YAML (as Snakemake's ``config`` or ``read_yaml`` gives it); it is not modified.
    Relative paths stay relative to the working directory (Snakemake's convention) unless ``base_dir``
    is given, in which case they are re-rooted under it. Path existence is not checked here: see
    ``check_paths``.
    """
    cfg, _ = _normalize(raw, base_dir, _Problems(collect=False))
    assert cfg is not None
    return cfg


def problems(raw: Any, base_dir: str | Path = ".", paths: bool = True, env: bool = True) -> list[str]:
    """Every problem of a raw config at once (what ``validate`` prints), [] when it is valid."""
    found = _Problems(collect=True)
    cfg, _ = _normalize(raw, base_dir, found)
    items = list(found.items)
    if cfg is not None:
        if paths:
            items += [p for p in check_paths(cfg) if p not in items]
        if env:
            items += check_env(cfg)
    return items


def summary(cfg: dict) -> str:
    """A readable multi-line summary of a normalized config (validate, inspect and the report use it)."""
    f, t, lo, pr = cfg["formatos"], cfg["treinamento"], cfg["lora"], cfg["predicao"]
    lines = [
        f"entrada: {f['tipo_entrada']} | formato_saida: {f['formato_saida']} | log: {cfg['misc']['log_level']}"
    ]
    if f["tipo_entrada"] == "pastas":
        p = cfg["pastas"]
        e = p["entrada"]
        if e["dataframe"]:
            lines.append(
                f"  entrada.dataframe: {e['dataframe']} (texto: {e['dataframe_col']}, id: {e['dataframe_id']})"
            )
        else:
            lines.append(f"  entrada.pasta: {e['pasta']} ({e['mascara']})")
        lines.append(f"  predicao.pasta: {p['predicao']['pasta']} ({p['predicao']['mascara']})")
        if e["prompt_template"]:
            lines.append(f"  prompt_template: {e['prompt_template']} (tag {e['tag_texto']})")
        d = p["divisao"]
        prop = d["proporcao"]
        lines.append(
            f"  divisao: {d['arquivo'] or 'results/data/divisao.csv'} | treino {prop['treino']:.2f} / "
            f"validacao {prop['validacao']:.2f} / teste {prop['teste']:.2f} | seed {d['seed']}"
        )
        v = p["validacao"]
        lines.append(
            f"  exigir_json_valido: {v['exigir_json_valido']} | skip_invalidos: {v['skip_invalidos']}"
        )
    else:
        ds = cfg["dataset"]
        if ds["hf_dataset"]:
            rev = f" @ {ds['hf_revision']}" if ds["hf_revision"] else ""
            lines.append(f"  hf_dataset: {ds['hf_dataset']}{rev}")
        for key in ("train_file", "eval_file", "test_file"):
            if ds[key]:
                lines.append(f"  {key}: {ds[key]}")
    key = cfg["misc"]["env_chave_criptografia"]
    lines.append(f"  criptografia: {'chave em $' + key if key else 'não'}")
    lines.append(f"modelo.base: {cfg['modelo']['base']}")
    eff = t["batch_size"] * t["grad_batch_size"]
    lines.append(
        f"treinamento: backend {t['backend']} | epochs {t['epochs']} | batch {t['batch_size']} x grad "
        f"{t['grad_batch_size']} = {eff} | lr {t['learning_rate']:g} | max_seq_length {t['max_seq_length']}"
    )
    lines.append(
        f"  nbits {t['nbits'] or 'sem quantização'} | precisao {t['precisao']} | eval_steps {t['eval_steps']} | "
        f"seed {t['seed']} | train_on_responses_only {t['train_on_responses_only']}"
    )
    modules = (
        lo["target_modules"] if isinstance(lo["target_modules"], str) else ", ".join(lo["target_modules"])
    )
    lora_text = (
        "full fine-tuning"
        if lo["r"] == 0
        else f"r {lo['r']} | alpha {lo['alpha']:g} | dropout {lo['dropout']:g}"
    )
    lines.append(f"lora: {lora_text} | {modules}")
    lines.append(
        f"predicao: batch {pr['batch_size']} | max_new_tokens {pr['max_new_tokens']} | temperatura "
        f"{pr['temperatura']:g} | n_exemplos {pr['n_exemplos'] or 'todos'}"
    )
    names = experiment_names(cfg)
    shown = [name if name == ident else f"{name} → results/{ident}/" for ident, name in names.items()]
    lines.append(f"experimentos ({len(names)}): {', '.join(shown)}")
    for name, override in (cfg.get("experimentos") or {}).items():
        changed = ", ".join(f"{path}={value}" for path, value in _flatten(override))
        lines.append(f"  {name}: {changed or '(sem alterações)'}")
    return "\n".join(lines)


def _normalize(raw: Any, base_dir: str | Path, found: _Problems) -> tuple[dict | None, _Problems]:
    """The whole pipeline; returns (cfg or None when it cannot be built, problems)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        found.add(f"config: the top level must be a mapping of sections, got {_kind(raw)}")
        return None, found
    cfg = copy.deepcopy(raw)
    schema = load_schema()
    sections = schema["properties"]

    _check_unknown(cfg, schema, "", found, top=True)
    for name in list(cfg):
        if name in sections and sections[name].get("type") == "object":
            cfg[name] = _as_mapping(cfg[name], name, found)
    overrides = cfg.pop("experimentos", None)

    _translate(cfg, "", found)
    _check_unknown(cfg, schema, "", found, top=False)
    _coerce(cfg, schema, "", found)
    _infer_input_type(cfg)
    if cfg.get("formatos", {}).get("tipo_entrada") == "pastas" and cfg.get("dataset"):
        log.info(
            "dataset section ignored: formatos.tipo_entrada is pastas (the original did not use it either)"
        )
        cfg["dataset"] = {}

    _validate_schema(cfg, "", found)
    _fill_missing_defaults(cfg, schema)
    modelo = cfg.setdefault("modelo", {})
    modelo.setdefault("base", "")
    modelo.setdefault("saida", "")
    _finish(cfg)
    _check_semantics(cfg, "", found)

    cfg["experimentos"] = _experiment_overrides(cfg, overrides, schema, found)
    if not cfg["experimentos"] and not overrides:
        problem = name_problem(default_experiment_name(cfg), "modelo.saida")
        if problem:
            found.add(problem + " (its last component names the experiment)")
    if str(base_dir) not in ("", "."):
        _reroot(cfg, Path(base_dir))
    return cfg, found


def _reroot(cfg: dict, base: Path) -> None:
    for keys in PATH_KEYS:
        value = _get(cfg, keys)
        if value and not Path(value).is_absolute():
            parent = _get(cfg, keys[:-1])
            parent[keys[-1]] = str(base / value)
