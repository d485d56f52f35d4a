"""The seed's aliases and value forms → canonical keys and values, before the schema sees them.

The original tool accepted several spellings (``base_model_name``, ``num_train_epochs``, four ``proporcao``
forms, LoRA keys under ``treinamento``, regex masks used as globs); each is translated here, in one place.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from typing import Any

from afinar.config.common import _as_mapping, _kind, _number, _Problems
from afinar.errors import AfinarError
from afinar.layout import SPLITS

log = logging.getLogger("afinar.config")

# The original tool's default mask was the regex ``^(.+)\.txt$`` used as a glob, which matches nothing
# (bug B5). Regexes of that shape ("any name, then an extension") are translated to the glob they meant.
_REGEX_ANY_NAME_EXT = re.compile(r"^\^?\(?\.[*+]\)?\\\.([A-Za-z0-9_]+)\$?$")
_REGEX_MARKERS = ("^", "$", "\\", "(", ")", "+", ".*", "|", "{")

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


def _infer_input_type(cfg: dict) -> None:
    formatos = cfg.setdefault("formatos", {})
    if isinstance(formatos, dict) and "tipo_entrada" not in formatos:
        inferred = "pastas" if "pastas" in cfg and "dataset" not in cfg else "dataset"
        formatos["tipo_entrada"] = inferred
        log.info("formatos.tipo_entrada not set: using %s", inferred)


def parse_eval_steps(value: Any, where: str = "treinamento.eval_steps") -> int | str:
    """``"15%"`` (kept as text, normalized), an integer, or a numeric string (→ int); else an AfinarError.

    The one reading of ``eval_steps``: the config normalizes with it, training resolves with it."""
    expected = "expected steps (e.g. 50) or a percentage of the run's steps (e.g. '15%')"
    if isinstance(value, bool):
        raise AfinarError(f"{where}: got {value!r} — {expected}")
    if isinstance(value, int):
        if value < 0:
            raise AfinarError(f"{where}: got {value!r} — {expected}, not negative")
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?%", text):
        percent = float(text[:-1])
        if not 0 <= percent <= 100:
            raise AfinarError(
                f"{where}: {text} — a percentage of the run's steps must be between 0% and 100%"
            )
        return f"{percent:g}%"
    if re.fullmatch(r"\d+", text):
        return int(text)
    raise AfinarError(f"{where}: got {value!r} — {expected}")


def _eval_steps(value: Any, where: str, found: _Problems) -> Any:
    try:
        return parse_eval_steps(value, where)
    except AfinarError as exc:
        found.add(str(exc))
        return value


def glob_mask(mask: str, key: str) -> str:
    """The shell glob to list files with, translating the original's regex default (bug B5).

    ``^(.+)\\.txt$`` (and the same shape with another extension) becomes ``*.txt`` with a warning; any
    other mask that looks like a regular expression, or that reaches into subfolders, is an error,
    because guessing what a regex meant would silently pick the wrong files. Pairing lists files with
    the same function.
    """
    mask = (mask or "").strip() or "*.txt"
    match = _REGEX_ANY_NAME_EXT.match(mask)
    if match:
        glob = f"*.{match.group(1)}"
        log.warning("%s: %r is a regular expression; using the glob %r it stands for", key, mask, glob)
        return glob
    if "/" in mask or os.sep in mask:
        raise AfinarError(
            f"{key}: mask {mask!r} names a subfolder — masks match file names in the folder itself "
            "(non-recursive); point pasta at the subfolder instead"
        )
    if any(marker in mask for marker in _REGEX_MARKERS):
        raise AfinarError(
            f"{key}: mask {mask!r} looks like a regular expression — masks are shell globs such as '*.txt' "
            "or 'doc_*.txt'"
        )
    return mask


def _glob_mask(mask: str, where: str, found: _Problems) -> str:
    try:
        return glob_mask(mask, where)
    except AfinarError as exc:
        found.add(str(exc))
        return mask
