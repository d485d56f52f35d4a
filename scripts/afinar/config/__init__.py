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
import difflib
import logging
import math
import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from afinar.data.crypto import read_dotenv
from afinar.errors import AfinarError
from afinar.train.smollm2 import resolve_builtin as builtin_model_folder

log = logging.getLogger("afinar.config")

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"
EXPERIMENT_SECTIONS = ("modelo", "treinamento", "lora", "predicao")
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
SPLITS = ("treino", "validacao", "teste")
SPLIT_NAMES = {
    "treino": "treino",
    "train": "treino",
    "validacao": "validacao",
    "validação": "validacao",
    "validation": "validacao",
    "avaliacao": "validacao",
    "avaliação": "validacao",
    "eval": "validacao",
    "teste": "teste",
    "test": "teste",
}
TRUE_WORDS = {"true", "sim", "s", "yes", "y", "1", "on", "verdadeiro"}
FALSE_WORDS = {"false", "nao", "não", "n", "no", "0", "off", "falso"}
NULL_WORDS = {"null", "none", "~", ""}
PROPORTION_TOLERANCE = 0.01
MISSING_BASE = (
    "modelo.base: missing — set the base model (a Hugging Face id or a local folder; alias base_model_name)"
)

# Old or English names that are not aliases but that users type: a precise hint beats difflib's guess.
HINTS = {
    "output_dir": "saida",
    "num_epochs": "epochs",
    "lr": "learning_rate",
    "gradient_accumulation_steps": "grad_batch_size",
    "per_device_train_batch_size": "batch_size",
    "warmup": "warmup_steps",
    "load_in_4bit": "nbits",
    "early_stopping_patience": "paciencia",
    "temperature": "temperatura",
    "model": "modelo",
    "training": "treinamento",
    "prediction": "predicao",
    "experiments": "experimentos",
}
# Aliases accepted per section (alias → canonical), applied before the unknown-key check.
SECTION_ALIASES = {
    "modelo": {"base_model_name": "base"},
    "treinamento": {"num_train_epochs": "epochs"},
}
# LoRA keys the seed's teste_integracao.yaml put under treinamento (ignored there): now applied.
MISPLACED_LORA = {
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
}
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


class _Problems:
    """Collects problem lines, or raises on the first one when not collecting (load_config's mode)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if not self.collect:
            raise AfinarError(message)
        if message not in self.items:
            self.items.append(message)


# --------------------------------------------------------------------------------------------- reading


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict; a missing, malformed or non-mapping file is an AfinarError.

    The error names the file and the line (1-based) where the parser gave up, because that is where the
    user has to look.
    """
    path = Path(path)
    if not path.is_file():
        raise AfinarError(
            f"{path}: config file not found — check the path, or run `python -m afinar validate {path} "
            "--interactive` to write a commented template"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AfinarError(f"{path}: not UTF-8 text ({exc.reason}) — save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AfinarError(f"{path}:{where}: malformed YAML ({what}) — fix the syntax there") from None
    if data is None:
        raise AfinarError(
            f"{path}: the file is empty — it needs at least modelo.base (see config/config.yaml)"
        )
    if not isinstance(data, dict):
        raise AfinarError(f"{path}: the top level must be a mapping of sections, got {_kind(data)}")
    return data


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of the canonical config (config/schema.yaml), parsed once per process."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# --------------------------------------------------------------------------------------------- public API


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


def experiments(cfg: dict) -> dict[str, dict]:
    """Per experiment name, the merged {modelo, treinamento, lora, predicao} of a normalized config.

    Without ``experimentos`` there is one experiment named after ``modelo.saida``'s last component.
    """
    base = {section: cfg[section] for section in EXPERIMENT_SECTIONS}
    overrides = cfg.get("experimentos") or {}
    if not overrides:
        exps = {default_experiment_name(cfg): copy.deepcopy(base)}
    else:
        exps = {name: _deep_merge(base, override) for name, override in overrides.items()}
    for exp in exps.values():  # built-in names (smollm2-135m-instruct) → the folder a rule builds
        exp["modelo"]["base"] = builtin_model_folder(str(exp["modelo"]["base"]))
    return exps


def default_experiment_name(cfg: dict) -> str:
    """Last path component of ``modelo.saida``, or ``modelo`` when it is empty."""
    saida = str(cfg.get("modelo", {}).get("saida") or "").strip().rstrip("/\\")
    name = Path(saida).name if saida else ""
    return name if name not in ("", ".", "..") else "modelo"


def check_paths(cfg: dict) -> list[str]:
    """Problems with files and folders the config names but no rule produces (relative to the CWD).

    Kept apart from ``load_config`` so the Snakefile parses even when a path (the demo model under
    results/) is an output of the workflow itself; ``modelo.base`` is not checked for that reason.
    """
    found: list[str] = []

    def need(keys: tuple[str, ...], kind: str, hint: str) -> None:
        value = _get(cfg, keys)
        if not value or not isinstance(value, str):
            return
        p = Path(value)
        ok = p.is_dir() if kind == "folder" else p.is_file()
        if not ok:
            what = "not a folder" if p.exists() else "does not exist"
            found.append(f"{'.'.join(keys)}: {kind} '{value}' {what} — {hint}")

    if cfg["formatos"]["tipo_entrada"] == "pastas":
        need(("pastas", "predicao", "pasta"), "folder", "point it to the folder of expected-output files")
        if cfg["pastas"]["entrada"]["dataframe"]:
            need(("pastas", "entrada", "dataframe"), "file", "point it to the parquet file of inputs")
        else:
            need(("pastas", "entrada", "pasta"), "folder", "point it to the folder of input files")
        need(("pastas", "entrada", "prompt_template"), "file", 'fix the path or set it to ""')
    else:
        for key in ("train_file", "eval_file", "test_file", "prompt_template"):
            need(("dataset", key), "file", "fix the path (relative paths start at the working directory)")
    need(("exportacao", "llama_cpp"), "folder", 'point it to a local llama.cpp checkout or set it to ""')
    return found


def check_env(cfg: dict, dotenv: str | Path = ".env") -> list[str]:
    """Problems with the encryption key variable: named but unset (environment and ``.env``) or malformed.

    The original silently trained on ciphertext when the variable was missing; the decrypt rule fails on
    it too, this lets ``validate`` say so before any job starts. The key itself is never logged.
    """
    name = cfg["misc"]["env_chave_criptografia"]
    if not name:
        return []
    value = os.environ.get(name) or read_dotenv(dotenv).get(name, "")
    if not value:
        return [
            f"misc.env_chave_criptografia: environment variable {name} is not set (nor in {dotenv}) — "
            f'export {name}=<Fernet key> or add it to {dotenv}, or set the key to "" if the data is not encrypted'
        ]
    try:
        from cryptography.fernet import Fernet

        Fernet(value.strip().encode())
    except (ValueError, TypeError):
        return [
            f"misc.env_chave_criptografia: the value of {name} is not a Fernet key "
            "(44 url-safe base64 characters) — check the variable"
        ]
    return []


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
    exps = experiments(cfg)
    lines.append(f"experimentos ({len(exps)}): {', '.join(exps)}")
    for name, override in (cfg.get("experimentos") or {}).items():
        changed = ", ".join(f"{path}={value}" for path, value in _flatten(override))
        lines.append(f"  {name}: {changed or '(sem alterações)'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- pipeline


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
    if not cfg["experimentos"]:
        name = default_experiment_name(cfg)
        if not EXPERIMENT_NAME.match(name):
            found.add(
                f"modelo.saida: its last component '{name}' names the experiment (results/<name>/) and may only "
                "use letters, digits, '.', '-' and '_' — rename it"
            )
    if str(base_dir) not in ("", "."):
        _reroot(cfg, Path(base_dir))
    return cfg, found


def _translate(cfg: dict, prefix: str, found: _Problems) -> None:
    """Seed aliases and value forms → canonical keys and values (in place, on the sections present)."""
    for section, aliases in SECTION_ALIASES.items():
        block = cfg.get(section)
        if not isinstance(block, dict):
            continue
        for alias, canonical in aliases.items():
            if alias not in block:
                continue
            value = block.pop(alias)
            if canonical in block and block[canonical] not in (None, "") and block[canonical] != value:
                found.add(
                    f"{prefix}{section}: both {canonical} ({block[canonical]!r}) and its alias {alias} ({value!r}) "
                    f"are set — keep only {canonical}"
                )
            elif block.get(canonical) in (None, ""):
                block[canonical] = value

    train = cfg.get("treinamento")
    if isinstance(train, dict):
        moved = [key for key in MISPLACED_LORA if key in train]
        if moved:
            lora = cfg.setdefault("lora", {})
            if not isinstance(lora, dict):
                lora = cfg["lora"] = {}
            for key in moved:
                value = train.pop(key)
                target = MISPLACED_LORA[key]
                if target in lora and lora[target] != value:
                    found.add(
                        f"{prefix}treinamento.{key}: conflicts with {prefix}lora.{target} ({lora[target]!r}) — "
                        f"keep only lora.{target}"
                    )
                    continue
                lora[target] = value
            log.warning(
                "%streinamento.%s: LoRA settings belong under lora: (the original ignored them here); applied as "
                "lora.%s — move them",
                prefix,
                ", ".join(moved),
                ", ".join(MISPLACED_LORA[k] for k in moved),
            )
        if "nbits" in train and (
            train["nbits"] is None or str(train["nbits"]).strip() in ("16", "null", "none")
        ):
            train["nbits"] = 0
        if "eval_steps" in train:
            train["eval_steps"] = _eval_steps(train["eval_steps"], f"{prefix}treinamento.eval_steps", found)
        if isinstance(train.get("report_to"), str):
            word = train["report_to"].strip()
            train["report_to"] = [] if word.lower() in ("none", "") else [w.strip() for w in word.split(",")]
        filtro = train.get("filtro_tokens")
        if filtro is None and "filtro_tokens" in train:
            train["filtro_tokens"] = {}

    lora = cfg.get("lora")
    if isinstance(lora, dict):
        if "r" in lora and (lora["r"] is None or lora["r"] is False):
            lora["r"] = 0
        modules = lora.get("target_modules")
        if isinstance(modules, str) and modules.strip() != "all-linear":
            lora["target_modules"] = [m.strip() for m in modules.split(",") if m.strip()]

    misc = cfg.get("misc")
    if isinstance(misc, dict):
        if isinstance(misc.get("log_level"), str):
            misc["log_level"] = misc["log_level"].strip().upper()
        if misc.get("env_chave_criptografia") is None and "env_chave_criptografia" in misc:
            misc["env_chave_criptografia"] = ""

    pastas = cfg.get("pastas")
    if isinstance(pastas, dict):
        for sub in ("predicao", "entrada", "divisao", "validacao"):
            if sub in pastas:
                pastas[sub] = _as_mapping(pastas[sub], f"{prefix}pastas.{sub}", found)
        entrada = pastas.get("entrada", {})
        if isinstance(entrada.get("dataframe"), bool):
            found.add(
                f"{prefix}pastas.entrada.dataframe: got {entrada['dataframe']!r}, but it is the PATH of a parquet file "
                "(the original's documentation was wrong) — e.g. dataframe: ./textos.parquet with dataframe_col: "
                "texto and dataframe_id: id"
            )
            entrada["dataframe"] = ""
        for sub in ("predicao", "entrada"):
            block = pastas.get(sub, {})
            if isinstance(block.get("mascara"), str):
                block["mascara"] = _glob_mask(block["mascara"], f"{prefix}pastas.{sub}.mascara", found)
        divisao = pastas.get("divisao", {})
        if "proporcao" in divisao:
            parsed = parse_proporcao(divisao["proporcao"], f"{prefix}pastas.divisao.proporcao", found.add)
            if parsed:
                divisao["proporcao"] = parsed
            else:  # already reported; the default keeps later checks quiet
                divisao.pop("proporcao")


def parse_proporcao(value: Any, where: str = "pastas.divisao.proporcao", report: Any = None) -> dict:
    """Any of the seed's four ``proporcao`` forms → {treino, validacao, teste} floats.

    Forms: ``[0.7, 0.1, 0.2]``; ``"0.7, 0.1, 0.2"``; ``{treino: 0.7, validacao: 0.1, teste: 0.2}``;
    ``[{treino: 0.7}, {validacao: 0.1}, {teste: 0.2}]``, with Portuguese or English names (see SPLIT_NAMES).
    Problems go to ``report`` (a callable taking one message; default: raise AfinarError). The sum and
    sign checks are done later, on the canonical form.
    """

    def fail(message: str) -> dict:
        if report is None:
            raise AfinarError(message)
        report(message)
        return {}

    forms = "a list of 3 numbers [0.7, 0.1, 0.2], a mapping {treino: 0.7, validacao: 0.1, teste: 0.2} or a list of them"
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        merged: dict = {}
        for item in value:
            if len(item) != 1:
                return fail(f"{where}: each list item must have one name, got {item!r} — use - treino: 0.7")
            ((k, v),) = item.items()
            if str(k).strip().lower() in {str(m).strip().lower() for m in merged}:
                return fail(f"{where}: '{k}' appears twice — give each of treino, validacao, teste once")
            merged[k] = v
        value = merged
    if isinstance(value, list):
        if len(value) != 3:
            return fail(
                f"{where}: {len(value)} values given, exactly 3 needed (treino, validacao, teste) — {forms}"
            )
        numbers = [_number(v) for v in value]
        if any(n is None for n in numbers):
            return fail(f"{where}: {value!r} must be numbers — {forms}")
        return dict(zip(SPLITS, numbers, strict=True))
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            canonical = SPLIT_NAMES.get(str(k).strip().lower())
            if canonical is None:
                guess = difflib.get_close_matches(str(k).strip().lower(), list(SPLIT_NAMES), n=1)
                hint = f"did you mean '{guess[0]}'? " if guess else ""
                return fail(f"{where}.{k}: unknown split name — {hint}use treino, validacao or teste")
            if canonical in out:
                return fail(
                    f"{where}: '{k}' repeats {canonical} — give each of treino, validacao, teste once"
                )
            number = _number(v)
            if number is None:
                return fail(f"{where}.{k}: {v!r} is not a number — use a fraction such as 0.7")
            out[canonical] = number
        return {split: out.get(split, 0.0) for split in SPLITS}
    return fail(f"{where}: got {_kind(value)} — {forms}")


def _check_semantics(cfg: dict, prefix: str, found: _Problems) -> None:
    """The rules a JSON Schema cannot state (run after defaults are filled)."""
    if "modelo" in cfg and not str(cfg["modelo"].get("base") or "").strip():
        found.add(f"{prefix}{MISSING_BASE}")
    t = cfg.get("treinamento", {})
    if t.get("max_steps") == 0:
        found.add(
            f"{prefix}treinamento.max_steps: 0 trains nothing — use -1 (epochs decide) or a positive number"
        )
    filtro = t.get("filtro_tokens") or {}
    max_tokens, max_seq = filtro.get("max_tokens"), t.get("max_seq_length")
    if isinstance(max_tokens, int) and isinstance(max_seq, int) and max_tokens > max_seq:
        found.add(
            f"{prefix}treinamento.filtro_tokens.max_tokens: {max_tokens} exceeds treinamento.max_seq_length "
            f"({max_seq}) — lower it or raise max_seq_length"
        )
    if prefix:
        return
    if cfg["formatos"]["tipo_entrada"] == "pastas":
        p = cfg["pastas"]
        prop = p["divisao"]["proporcao"]
        if isinstance(prop, dict) and prop and all(isinstance(prop.get(s), float | int) for s in SPLITS):
            negative = [s for s in SPLITS if prop[s] < 0]
            if negative:
                found.add(
                    f"pastas.divisao.proporcao.{negative[0]}: {prop[negative[0]]} is negative — use 0 to 1"
                )
            total = sum(prop[s] for s in SPLITS)
            if abs(total - 1) > PROPORTION_TOLERANCE:
                found.add(
                    f"pastas.divisao.proporcao: treino {prop['treino']} + validacao {prop['validacao']} + teste "
                    f"{prop['teste']} = {total:.4g}, must sum to 1 (±{PROPORTION_TOLERANCE}) — adjust the values"
                )
            if prop["treino"] <= 0:
                found.add("pastas.divisao.proporcao.treino: must be above 0 — nothing would be trained")
            if cfg["treinamento"]["paciencia"] and prop["validacao"] <= 0:
                found.add(
                    "treinamento.paciencia: early stopping needs a validation split, but proporcao.validacao is 0 — "
                    "give validacao a share or set paciencia: null"
                )
        if not p["predicao"]["pasta"]:
            found.add("pastas.predicao.pasta: empty — set the folder of expected-output files")
        e = p["entrada"]
        if not e["pasta"] and not e["dataframe"]:
            found.add("pastas.entrada: neither pasta nor dataframe is set — give the folder of input files")
        if e["dataframe"]:
            for key in ("dataframe_col", "dataframe_id"):
                if not e[key]:
                    found.add(
                        f"pastas.entrada.{key}: required with entrada.dataframe — name the parquet column"
                    )
        if e["prompt_template"] and not e["tag_texto"]:
            found.add(
                "pastas.entrada.tag_texto: empty while prompt_template is set — name the placeholder the text "
                "replaces, e.g. '<<--TEXTO-->>'"
            )
    else:
        ds = cfg["dataset"]
        if not ds["train_file"] and not ds["hf_dataset"]:
            found.add(
                "dataset.train_file: empty — give the training file (or dataset.hf_dataset) in dataset mode"
            )
        if (
            cfg["treinamento"]["paciencia"]
            and not ds["eval_file"]
            and not (ds["hf_dataset"] and ds["hf_splits"]["validacao"])
        ):
            found.add(
                "treinamento.paciencia: early stopping needs a validation set — set dataset.eval_file or paciencia: null"
            )
    if cfg["treinamento"]["paciencia"] and cfg["treinamento"]["eval_steps"] in (0, "0%"):
        found.add(
            "treinamento.paciencia: early stopping needs evaluations, but eval_steps is 0 — set eval_steps"
        )


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
    for name, override in overrides.items():
        name = str(name)
        where = f"experimentos.{name}"
        if not EXPERIMENT_NAME.match(name):
            found.add(
                f"{where}: invalid experiment name — use only letters, digits, '.', '-' and '_' (it names results/{name}/)"
            )
            continue
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


# --------------------------------------------------------------------------------------------- schema helpers


def _check_unknown(data: dict, schema: dict, prefix: str, found: _Problems, top: bool) -> None:
    """Reject keys the schema does not know, naming the full path and the closest valid name.

    With ``top`` only the top level is checked (before translation, so a misspelled section is reported
    before its contents); otherwise every level below it.
    """
    props = schema.get("properties", {})
    for key in list(data):
        path = f"{prefix}{key}"
        if key not in props:
            if schema.get("additionalProperties") is False and (top or prefix):
                found.add(f"{path}: unknown key — {suggest_key(key, props, path)}")
                data.pop(key)
            continue
        if top:
            continue
        sub = props[key]
        if (
            isinstance(data[key], dict)
            and sub.get("type") == "object"
            and "properties" in sub
            and key != "experimentos"
        ):
            _check_unknown(data[key], sub, f"{path}.", found, top=False)


def suggest_key(key: str, props: dict, path: str) -> str:
    """The "what to do" half of an unknown-key message: a close valid name, the section it belongs to, or the list."""
    candidates = list(props)
    section = path.split(".")[-2] if "." in path else ""
    candidates += list(SECTION_ALIASES.get(section, {}))
    if str(key) in HINTS and HINTS[str(key)] in props:
        return f"did you mean '{HINTS[str(key)]}'?"
    close = difflib.get_close_matches(str(key), candidates, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    elsewhere = _sections_with_key(str(key))
    if elsewhere:
        return f"it belongs under {elsewhere[0]} (move it there)"
    return f"valid keys here: {', '.join(props)}"


def _sections_with_key(key: str) -> list[str]:
    """Where else in the schema a key exists (e.g. dropout → lora), for misplaced keys."""
    out = []

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            here = f"{path}.{name}" if path else name
            if name == key and path:
                out.append(path)
            if isinstance(sub, dict):
                walk(sub, here)

    walk(load_schema(), "")
    return out


def _coerce(data: dict, schema: dict, prefix: str, found: _Problems) -> None:
    """Turn YAML/--config strings into the types the schema asks for ("sim" → True, "2e-4" → 0.0002).

    Snakemake's ``--config key={a: 3}`` yields strings, and PyYAML reads ``2e-4`` as a string, so a
    strict type check would reject values users reasonably wrote. Only unambiguous forms convert;
    anything else is left for the schema to report.
    """
    props = schema.get("properties", {})
    for key, value in list(data.items()):
        sub = props.get(key)
        if not isinstance(sub, dict):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "properties" in sub:
            _coerce(value, sub, f"{path}.", found)
            continue
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if "enum" in sub and all(isinstance(v, int) for v in sub["enum"]):
            types.append("integer")
        if isinstance(value, str) and "null" in types and value.strip().lower() in NULL_WORDS:
            data[key] = None
        elif "boolean" in types and not isinstance(value, bool) and isinstance(value, str | int):
            word = str(value).strip().lower()
            if word in TRUE_WORDS:
                data[key] = True
            elif word in FALSE_WORDS:
                data[key] = False
            else:
                found.add(f"{path}: {value!r} is not a yes/no value — use true/false (or sim/não)")
                data.pop(key)
        elif "integer" in types and isinstance(value, str):
            number = _number(value)
            if number is not None and float(number).is_integer():
                data[key] = int(number)
        elif "integer" in types and isinstance(value, float) and value.is_integer() and "number" not in types:
            data[key] = int(value)
        elif "number" in types and isinstance(value, str) and _number(value) is not None:
            data[key] = _number(value)


def _validate_schema(data: dict, prefix: str, found: _Problems) -> None:
    """Validate against config/schema.yaml with snakemake.utils.validate (fills defaults in place).

    snakemake raises on the first error; when collecting, jsonschema's iter_errors adds the others.
    Each error becomes one line that names the key and what is expected.
    """
    from snakemake.utils import validate

    try:
        validate(data, str(SCHEMA_PATH), set_default=True)
        return
    except Exception as exc:  # snakemake wraps the jsonschema error in its WorkflowError
        candidates = [*exc.args, exc.__context__, exc.__cause__, exc]
        first = next((a for a in candidates if _is_validation_error(a)), None)
        if first is None:
            raise
        found.add(_translate_error(first, prefix))
    if found.collect:
        import jsonschema

        validator = jsonschema.Draft202012Validator(load_schema())
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
            found.add(_translate_error(error, prefix))


def _is_validation_error(obj: Any) -> bool:
    import jsonschema

    return isinstance(obj, jsonschema.ValidationError)


def _translate_error(error: Any, prefix: str) -> str:
    """A jsonschema ValidationError → "<key.path>: got X — expected Y"."""
    path = prefix + ".".join(str(p) for p in error.absolute_path)
    validator = error.validator
    if validator == "required":
        missing = re.findall(r"'([^']+)'", error.message)
        key = f"{path}.{missing[0]}" if path and missing else (missing[0] if missing else path)
        if key.endswith("modelo.base") or key.endswith("modelo"):
            return f"{prefix}{MISSING_BASE}"
        return f"{key}: required — add it"
    if validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        return f"{path}.{extra[0] if extra else '?'}: unknown key — remove it (see docs/config.md)"
    if validator == "propertyNames":
        return f"{path}.{error.instance}: invalid name — use only letters, digits, '.', '-' and '_'"
    if path.endswith("modelo.base") and error.instance in ("", None):
        return f"{prefix}{MISSING_BASE}"
    schema = _property_schema(error)
    return f"{path or 'config'}: got {_show(error.instance)} — expected {_expected(schema)}"


def _property_schema(error: Any) -> dict:
    """The schema of the key at fault (for anyOf branches, the parent that lists them)."""
    schema = load_schema()
    node = schema
    for part in error.absolute_path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return error.schema
    return node


def _expected(schema: dict) -> str:
    """Describe what a schema accepts, in words ("an integer >= 1", "one of auto, bf16")."""
    if "anyOf" in schema:
        return " or ".join(_expected(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    types = schema.get("type", "value")
    types = [types] if isinstance(types, str) else types
    names = {
        "integer": "an integer",
        "number": "a number",
        "string": "a text",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "null",
    }
    text = " or ".join(names.get(t, t) for t in types)
    bounds = []
    for word, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if word in schema:
            bounds.append(f"{sign} {schema[word]}")
    if "minLength" in schema:
        bounds.append("not empty")
    if "pattern" in schema:
        bounds.append("like " + ("'15%'" if "%" in schema["pattern"] else f"/{schema['pattern']}/"))
    if schema.get("type") == "array":
        item_type = schema.get("items", {}).get("type")
        text = {"string": "a list of names", "integer": "a list of integers"}.get(item_type, "a list")
        bounds = ["not empty"] if schema.get("minItems") else []
    return " ".join([text, ", ".join(bounds)]).strip()


def _fill_missing_defaults(cfg: dict, schema: dict) -> None:
    """Defaults for sections snakemake's filler skipped because validation stopped early (collect mode)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if isinstance(cfg.get(key), dict) and "properties" in sub:
            _fill_missing_defaults(cfg[key], sub)


def _finish(cfg: dict) -> None:
    """Last canonical touches once defaults are in: float proportions and keys in the schema's order."""
    _order(cfg, load_schema())
    prop = cfg.get("pastas", {}).get("divisao", {}).get("proporcao")
    if isinstance(prop, dict):
        for split in SPLITS:
            if isinstance(prop.get(split), int):
                prop[split] = float(prop[split])
    t = cfg.get("treinamento", {})
    if isinstance(t.get("learning_rate"), int):
        t["learning_rate"] = float(t["learning_rate"])


def _order(data: dict, schema: dict) -> None:
    """Reorder keys as the schema lists them, so dumps of the config (report, inspect) read the same way."""
    props = schema.get("properties", {})
    keys = [k for k in props if k in data] + [k for k in data if k not in props]
    items = {k: data.pop(k) for k in keys}
    data.update(items)
    for key, sub in props.items():
        if isinstance(data.get(key), dict) and "properties" in sub:
            _order(data[key], sub)


def _infer_input_type(cfg: dict) -> None:
    formatos = cfg.setdefault("formatos", {})
    if isinstance(formatos, dict) and "tipo_entrada" not in formatos:
        inferred = "pastas" if "pastas" in cfg and "dataset" not in cfg else "dataset"
        formatos["tipo_entrada"] = inferred
        log.info("formatos.tipo_entrada not set: using %s", inferred)


# --------------------------------------------------------------------------------------------- small helpers


def _eval_steps(value: Any, where: str, found: _Problems) -> Any:
    """``"15%"`` (kept as text), an integer, or a numeric string (→ int); anything else is a problem."""
    if isinstance(value, bool):
        found.add(
            f"{where}: got {value!r} — expected steps (e.g. 50) or a percentage of the run's steps (e.g. '15%')"
        )
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?%", text):
        percent = float(text[:-1])
        if not 0 <= percent <= 100:
            found.add(f"{where}: {text} — a percentage of the run's steps must be between 0% and 100%")
        return f"{percent:g}%"
    if re.fullmatch(r"\d+", text):
        return int(text)
    found.add(
        f"{where}: got {value!r} — expected steps (e.g. 50) or a percentage of the run's steps (e.g. '15%')"
    )
    return value


def _glob_mask(mask: str, where: str, found: _Problems) -> str:
    """The seed's default masks were regexes used as globs (bug B5): translate ``^(.+)\\.txt$`` to ``*.txt``."""
    m = re.fullmatch(r"\^\(\.[+*]\)\\\.([A-Za-z0-9]+)\$", mask.strip())
    if m:
        log.warning("%s: regex %r read as the glob '*.%s' — write the glob", where, mask, m.group(1))
        return f"*.{m.group(1)}"
    if mask.startswith("^") or mask.endswith("$"):
        found.add(f"{where}: {mask!r} looks like a regular expression — masks are globs, e.g. '*.txt'")
    return mask


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _as_mapping(value: Any, where: str, found: _Problems) -> dict:
    """A section written as ``lora:`` with nothing under it is None: treat it as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        found.add(
            f"{where}: got {_kind(value)} — expected a mapping of keys (indent them under {where.split('.')[-1]}:)"
        )
        return {}
    return value


def _deep_merge(base: dict, override: dict) -> dict:
    """Copy of ``base`` with ``override`` merged in: mappings merge, everything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            yield f"{prefix}{key}", value


def _get(cfg: dict, keys: tuple[str, ...]) -> Any:
    node: Any = cfg
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _reroot(cfg: dict, base: Path) -> None:
    for keys in PATH_KEYS:
        value = _get(cfg, keys)
        if value and not Path(value).is_absolute():
            parent = _get(cfg, keys[:-1])
            parent[keys[-1]] = str(base / value)


def _kind(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a text",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return f"{names.get(type(value), type(value).__name__)} ({_show(value)})"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
