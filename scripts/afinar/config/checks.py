"""Cross-key checks: every rule about config values that a JSON Schema cannot state.

``_check_semantics`` runs on the normalized config (defaults filled); ``check_paths`` and ``check_env``
look outside the config (files, the encryption variable) and are kept apart so the Snakefile parses before
the files its rules produce exist.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from afinar.config.common import MISSING_BASE, _get, _Problems
from afinar.layout import SPLITS

PROPORTION_TOLERANCE = 0.01
#: the fewest prompt tokens generation may be left with (max_seq_length - max_new_tokens)
MIN_PROMPT_TOKENS = 16
GGUF_TYPE = re.compile(r"[a-z0-9_]+")


def _check_semantics(cfg: dict, prefix: str, found: _Problems) -> None:
    """The rules a JSON Schema cannot state (run after defaults are filled).

    With a ``prefix`` (an experiment's overrides merged over the config) only the experiment's own
    sections are checked: the data sections were checked once, at the top level.
    """
    check_experiment(cfg, prefix, found)
    if prefix:
        return
    _check_data(cfg, found)


def check_experiment(cfg: dict, prefix: str, found: _Problems) -> None:
    """Cross-key rules of one experiment's modelo/treinamento/lora/predicao (defaults filled)."""
    if "modelo" in cfg and not str(cfg["modelo"].get("base") or "").strip():
        found.add(f"{prefix}{MISSING_BASE}")
    t = cfg.get("treinamento", {})
    if t.get("max_steps") == 0:
        found.add(
            f"{prefix}treinamento.max_steps: 0 trains nothing — use -1 (epochs decide) or a positive number"
        )
    if t:
        from afinar.train.dist_config import config_problems

        for issue in config_problems(t):  # impossible distributed combinations (FSDP + 4-bit, ...)
            found.add(f"{prefix}{issue}")
    filtro = t.get("filtro_tokens") or {}
    max_tokens, max_seq = filtro.get("max_tokens"), t.get("max_seq_length")
    if isinstance(max_tokens, int) and isinstance(max_seq, int) and max_tokens > max_seq:
        found.add(
            f"{prefix}treinamento.filtro_tokens.max_tokens: {max_tokens} exceeds treinamento.max_seq_length "
            f"({max_seq}) — lower it or raise max_seq_length"
        )
    problem = token_budget_problem(t.get("tokens_por_lote"), max_seq, bool(t.get("packing")))
    if problem:
        found.add(f"{prefix}{problem}")
    if t.get("paciencia") and t.get("eval_steps") in (0, "0%"):
        found.add(
            f"{prefix}treinamento.paciencia: early stopping needs evaluations, but eval_steps is 0 — set eval_steps"
        )
    problem = prompt_room_problem(max_seq, cfg.get("predicao", {}).get("max_new_tokens"), prefix)
    if problem:
        found.add(problem)


def token_budget_problem(value: Any, max_len: Any, packing: bool) -> str | None:
    """``treinamento.tokens_por_lote`` against max_seq_length and packing (the train stage asks the same,
    through afinar.train.batching)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"treinamento.tokens_por_lote: {value!r} must be a positive integer or null"
    if packing:
        return (
            "treinamento.tokens_por_lote: packed rows already hold max_seq_length tokens each — "
            "set packing: false or tokens_por_lote: null"
        )
    if isinstance(max_len, int) and value < max_len:
        return (
            f"treinamento.tokens_por_lote: {value} is below max_seq_length ({max_len}), so the longest "
            f"records would not fit in a batch — set it to at least {max_len}"
        )
    return None


def prompt_room_problem(max_seq_length: Any, max_new_tokens: Any, prefix: str = "") -> str | None:
    """Generation keeps prompt + answer within max_seq_length: too little room left for the prompt is an
    error here, at validate time, rather than in the predict job after training has finished."""
    if not isinstance(max_seq_length, int) or not isinstance(max_new_tokens, int):
        return None
    room = max_seq_length - max_new_tokens
    if room >= MIN_PROMPT_TOKENS:
        return None
    return (
        f"{prefix}predicao.max_new_tokens: {max_new_tokens} leaves {room} prompt tokens within "
        f"treinamento.max_seq_length {max_seq_length} (at least {MIN_PROMPT_TOKENS} needed) — lower max_new_tokens "
        "or raise max_seq_length"
    )


def entrada_problems(entrada: dict[str, Any]) -> list[str]:
    """Where the inputs come from: a folder, or a parquet file with its text and id columns (pairing
    raises the first of these too, for callers that skip the config layer)."""
    out = []
    dataframe = str(entrada.get("dataframe") or "").strip()
    if not str(entrada.get("pasta") or "").strip() and not dataframe:
        out.append(
            "pastas.entrada: neither pasta nor dataframe is set — give the folder of input files (pasta) or a "
            "parquet file (dataframe, dataframe_col, dataframe_id)"
        )
    if dataframe:
        for key in ("dataframe_col", "dataframe_id"):
            if not entrada.get(key):
                out.append(f"pastas.entrada.{key}: required with entrada.dataframe — name the parquet column")
    return out


def _check_data(cfg: dict, found: _Problems) -> None:
    """Cross-key rules of the data sections, which every experiment shares."""
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
            arquivo = p["divisao"]["arquivo"]
            if prop["teste"] <= 0 and not (arquivo and Path(arquivo).is_file()):
                found.add(
                    "pastas.divisao.proporcao.teste: 0 leaves the test split empty, and predictions and evaluation "
                    "need test records — give teste a share (e.g. 0.2)"
                )
            if cfg["treinamento"]["paciencia"] and prop["validacao"] <= 0:
                found.add(
                    "treinamento.paciencia: early stopping needs a validation split, but proporcao.validacao is 0 — "
                    "give validacao a share or set paciencia: null"
                )
        if not p["predicao"]["pasta"]:
            found.add("pastas.predicao.pasta: empty — set the folder of expected-output files")
        e = p["entrada"]
        for problem in entrada_problems(e):
            found.add(problem)
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
    gguf = str(cfg["exportacao"]["gguf"] or "").strip().lower()
    if gguf and not GGUF_TYPE.fullmatch(gguf):
        found.add(f"exportacao.gguf: {gguf!r} is not a GGUF type — use q8_0, f16, bf16, f32 or q4_k_m")


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
            where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
            found.append(f"{'.'.join(keys)}: {kind} '{value}'{where} {what} — {hint}")

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
    from afinar.data.crypto import read_dotenv  # pandas/pyarrow: only when a key is named

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
