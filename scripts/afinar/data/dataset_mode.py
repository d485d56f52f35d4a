"""Dataset mode (``formatos.tipo_entrada: dataset``): ready-made chat records → the same split files.

Files may be parquet, JSON (an array of objects, or one object per line), JSON lines (``.jsonl``) or
``.txt`` holding JSON lines. Each file is auto-detected as *messages* (a ``messages`` column, or the
column named by ``dataset.train_prompt_col``) or *prompt/completion* (TRL's format; plain strings or
message lists), and every row is validated, so a bad record is reported by file and row before any
training starts (the original read ``.json`` as JSON lines and never checked rows, bug B14).

``train_file`` is required; ``eval_file`` and ``test_file`` are optional. Without ``test_file`` the test
split (and, without ``eval_file``, the validation split) is carved out of the training file with
``pastas.divisao.proporcao`` and ``seed``, using the same deterministic assignment as ``pastas`` mode.

Instead of files, ``dataset.hf_dataset`` names a Hugging Face dataset: a Hub id, a local folder of
parquet/JSON shards (both through ``datasets.load_dataset``'s builder, the same code path) or a folder
written by ``save_to_disk`` (``datasets.load_from_disk``). Its splits (``dataset.hf_splits``) become the
same role → :class:`Records` mapping as the files, so everything after loading is shared, and what was
loaded (name, config, requested and resolved revision, fingerprints) is recorded in ``divisao.json``.
``dataset.colunas`` renames columns (source → ``messages``/``prompt``/``completion``/``id``) in both cases.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from afinar.data.splits import (
    SPLIT_SCHEMA,
    SPLITS,
    SplitOutputs,
    assign_splits,
    build_prompt,
    check_counts,
    read_template,
    write_outputs,
)
from afinar.errors import AfinarError
from afinar.preflight import resolved

log = logging.getLogger("afinar.data.dataset_mode")

ROLES = ("system", "user", "assistant")
FIX_RECORD = " — fix or remove that record"
FILE_KEYS = {"treino": "dataset.train_file", "validacao": "dataset.eval_file", "teste": "dataset.test_file"}


@dataclass
class Records:
    """Chat records of one source: parallel lists of ids and message lists."""

    ids: list[str] = field(default_factory=list)
    messages: list[list[dict[str, str]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, wanted: set[str]) -> Records:
        """The records whose id is in ``wanted`` (order kept)."""
        keep = [i for i, rid in enumerate(self.ids) if rid in wanted]
        return Records([self.ids[i] for i in keep], [self.messages[i] for i in keep])

    def table(self) -> pa.Table:
        """Arrow table with the split contract's schema (``id``, ``messages``)."""
        return pa.table(
            [pa.array(self.ids, pa.string()), pa.array(self.messages, SPLIT_SCHEMA.field("messages").type)],
            schema=SPLIT_SCHEMA,
        )


# --- readers: path → list of row dicts ----------------------------------------------------------------


def _read_parquet(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    except (pa.ArrowException, OSError) as exc:
        raise AfinarError(
            f"{key} {str(path)!r}: not a readable parquet file ({exc}) — re-export it"
        ) from None


def _read_json_lines(path: Path, key: str, text: str | None = None) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig") if text is None else text
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AfinarError(
                f"{key} {str(path)!r} line {lineno}: not valid JSON ({exc.msg}) — one JSON object per line is expected"
            ) from None
        if not isinstance(row, dict):
            raise AfinarError(
                f"{key} {str(path)!r} line {lineno}: a JSON object is expected, not {type(row).__name__}"
                + FIX_RECORD
            )
        rows.append(row)
    return rows


def _read_json(path: Path, key: str) -> list[dict[str, Any]]:
    """A ``.json`` file: an array of objects, or JSON lines (both exist in the wild under this name)."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.lstrip().startswith("["):
        return _read_json_lines(path, key, text)
    try:
        rows: list[dict[str, Any]] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AfinarError(
            f"{key} {str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno}) — fix the file"
        ) from None
    bad = next((i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise AfinarError(
            f"{key} {str(path)!r} row {bad}: a JSON object is expected in the array" + FIX_RECORD
        )
    return rows


READERS: dict[str, Callable[[Path, str], list[dict[str, Any]]]] = {
    ".parquet": _read_parquet,
    ".json": _read_json,
    ".jsonl": _read_json_lines,
    ".txt": _read_json_lines,
}


def read_rows(path: str | Path, key: str) -> list[dict[str, Any]]:
    """Rows of a dataset file, by extension; unknown extensions and missing files are user errors."""
    path = Path(path)
    if not path.is_file():
        raise AfinarError(f"{key}: file {resolved(str(path))} does not exist — fix the path in the config")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise AfinarError(
            f"{key} {str(path)!r}: unknown format {path.suffix!r} — use {', '.join(sorted(READERS))}"
        )
    try:
        return reader(path, key)
    except UnicodeDecodeError:
        raise AfinarError(f"{key} {str(path)!r}: not UTF-8 text — re-save it as UTF-8") from None


# --- rows → messages ---------------------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    """Message content as text; typed content (``[{type: text, text: ...}]``) is joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise AfinarError(
                    f"{where}: only text content parts are supported ({{'type': 'text', 'text': ...}})"
                    + FIX_RECORD
                )
            parts.append(part["text"])
        return "".join(parts)
    raise AfinarError(f"{where}: content must be a string, not {type(content).__name__}" + FIX_RECORD)


def validate_messages(value: Any, where: str) -> list[dict[str, str]]:
    """Check one conversation and return it as plain ``{role, content}`` dicts.

    It needs at least one user message and must end with a non-empty assistant message: that last
    message is what the model learns and what prediction compares against.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise AfinarError(
                f"{where}: messages is a string that is not a JSON list of messages" + FIX_RECORD
            ) from None
    if not isinstance(value, list) or not value:
        raise AfinarError(
            f"{where}: messages must be a non-empty list of {{role, content}} objects" + FIX_RECORD
        )
    out = []
    for pos, msg in enumerate(value, start=1):
        here = f"{where} message {pos}"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise AfinarError(f"{here}: each message needs 'role' and 'content'" + FIX_RECORD)
        if msg["role"] not in ROLES:
            raise AfinarError(f"{here}: role {msg['role']!r} is not one of {', '.join(ROLES)}" + FIX_RECORD)
        out.append({"role": msg["role"], "content": _content_text(msg["content"], here)})
    if not any(m["role"] == "user" for m in out):
        raise AfinarError(f"{where}: no user message" + FIX_RECORD)
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise AfinarError(f"{where}: the last message must be a non-empty assistant answer" + FIX_RECORD)
    return out


def _side(value: Any, role: str, where: str) -> list[dict[str, str]]:
    """One side of a prompt/completion row: a plain string or a list of messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        if not all(isinstance(m, dict) for m in value):
            raise AfinarError(
                f"{where}: {role} side must be a list of {{role, content}} objects" + FIX_RECORD
            )
        return list(value)
    raise AfinarError(
        f"{where}: {role} side must be a string or a list of messages, not {type(value).__name__}"
        + FIX_RECORD
    )


def detect_format(rows: list[dict[str, Any]], prompt_col: str, where: str) -> str:
    """Column holding messages, or ``"prompt/completion"``; decided on the file's columns."""
    columns = set().union(*(row.keys() for row in rows[:100])) if rows else set()
    for candidate in (prompt_col, "messages"):
        if candidate and candidate in columns:
            return candidate
    if {"prompt", "completion"} <= columns:
        return "prompt/completion"
    raise AfinarError(
        f"{where}: no {prompt_col or 'messages'!r} column and no 'prompt'/'completion' columns (found: "
        f"{', '.join(sorted(columns)) or 'none'}) — set dataset.train_prompt_col to the column with the messages"
    )


def rows_to_records(
    rows: list[dict[str, Any]],
    path: str | Path,
    key: str,
    role: str,
    prompt_col: str,
    template: str,
    tag: str,
) -> Records:
    """Validate every row of a file and build its records (ids from an ``id`` column, else ``<role>-<row>``)."""
    where_file = f"{key} {str(path)!r}"
    if not rows:
        raise AfinarError(f"{where_file}: the file has no records — point the key at a file with data")
    fmt = detect_format(rows, prompt_col, where_file)
    records = Records()
    seen: set[str] = set()
    for rowno, row in enumerate(rows, start=1):
        where = f"{where_file} row {rowno}"
        if fmt == "prompt/completion":
            if "prompt" not in row or "completion" not in row:
                raise AfinarError(f"{where}: 'prompt' and 'completion' are both required" + FIX_RECORD)
            messages = _side(row["prompt"], "user", where) + _side(row["completion"], "assistant", where)
        else:
            if fmt not in row:
                raise AfinarError(f"{where}: column {fmt!r} is missing" + FIX_RECORD)
            messages = row[fmt]
        messages = validate_messages(messages, where)
        if template:
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = build_prompt(template, tag, first_user["content"])
        rid = str(row["id"]) if row.get("id") is not None else f"{role}-{rowno:06d}"
        if rid in seen:
            raise AfinarError(f"{where}: id {rid!r} appears more than once — ids must be unique")
        seen.add(rid)
        records.ids.append(rid)
        records.messages.append(messages)
    log.info("%s: %d records (%s)", where_file, len(records), fmt)
    return records


def rename_columns(rows: list[dict[str, Any]], colunas: dict[str, str], where: str) -> list[dict[str, Any]]:
    """Apply ``dataset.colunas`` (source column → new name); a source column that is absent is an error."""
    if not colunas:
        return rows
    available = set().union(*(row.keys() for row in rows[:100])) if rows else set()
    for source in colunas:
        if source not in available:
            raise AfinarError(
                f"dataset.colunas: column {source!r} is not in {where} (columns: "
                f"{', '.join(sorted(available)) or 'none'}) — map one of those"
            )
    return [{colunas.get(k, k): v for k, v in row.items()} for row in rows]


def _records_of_rows(
    rows: list[dict[str, Any]], path: str, key: str, role: str, dataset: dict[str, Any], col: str
) -> Records:
    """Rows of one source (renamed by ``dataset.colunas``) → validated records."""
    template_path = str(dataset.get("prompt_template") or "").strip()
    template = read_template(template_path, "dataset.prompt_template") if template_path else ""
    rows = rename_columns(rows, dict(dataset.get("colunas") or {}), f"{key} {path!r}")
    return rows_to_records(rows, path, key, role, col, template, str(dataset.get("tag_texto") or ""))


def _check_unique_owner(sources: dict[str, Records], keys: dict[str, str]) -> None:
    owner: dict[str, str] = {}
    for role, records in sources.items():
        for rid in records.ids:
            if rid in owner:
                raise AfinarError(
                    f"{keys[role]}: id {rid!r} is also in {keys[owner[rid]]} — a record belongs to one split"
                )
            owner[rid] = role


def load_sources(dataset: dict[str, Any]) -> dict[str, Records]:
    """Records per role (``treino`` always; ``validacao``/``teste`` when their file or split exists).

    The single entry point for where records come from: local files, or ``dataset.hf_dataset``
    (see :func:`load_hf_sources`, which also returns what was loaded, for the report).
    """
    if str(dataset.get("hf_dataset") or "").strip():
        return load_hf_sources(dataset)[0]
    files = {
        "treino": dataset["train_file"],
        "validacao": dataset["eval_file"],
        "teste": dataset["test_file"],
    }
    if not str(files["treino"] or "").strip():
        raise AfinarError(
            "dataset.train_file: not set — give the training file (parquet, json, jsonl or txt)"
        )
    train_col = str(dataset.get("train_prompt_col") or "messages")
    cols = {
        "treino": train_col,
        "validacao": str(dataset.get("eval_prompt_col") or train_col),
        "teste": train_col,
    }
    sources = {}
    for role, path in files.items():
        if str(path or "").strip():
            rows = read_rows(path, FILE_KEYS[role])
            sources[role] = _records_of_rows(rows, str(path), FILE_KEYS[role], role, dataset, cols[role])
    _check_unique_owner(sources, FILE_KEYS)
    return sources


# --- Hugging Face datasets ---------------------------------------------------------------------------

HF_KEY = "dataset.hf_dataset"
#: ``hf_splits`` defaults: a default split name the dataset lacks is carved from treino; a name the user
#: chose that the dataset lacks is a typo and an error.
DEFAULT_HF_SPLITS = {"treino": "train", "validacao": "validation", "teste": "test"}


def _hf_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``save_to_disk`` (a DatasetDict or a single Dataset)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "…") if len(text) > 200 else text or type(exc).__name__


def open_hf_dataset(
    name: str, config: str = "", revision: str = "", cache_dir: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open a Hugging Face dataset → (split name → ``datasets.Dataset``, provenance for ``divisao.json``).

    A folder saved with ``save_to_disk`` goes through ``load_from_disk``; anything else (a Hub id, a
    local folder of parquet/JSON shards) through the builder of ``load_dataset``, whose ``hash`` is the
    Hub commit for Hub datasets (a hash of the files for local folders): the *resolved* revision.
    Offline and not cached, or any loading failure, is one line.
    """
    import datasets

    datasets.disable_progress_bars()
    folder = Path(name).expanduser()
    prov: dict[str, Any] = {
        "nome": name,
        "config": config or None,
        "revisao_pedida": revision or None,
        "revisao_resolvida": None,
        "versao": None,
        "carregado_com": None,
        "fingerprints": {},
    }
    if folder.is_dir() and _is_saved_dataset(folder):
        if config or revision:
            log.warning(
                "%s: a save_to_disk folder has no config or revision; hf_config/hf_revision ignored", name
            )
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:  # corrupt folders raise many kinds of errors
            raise AfinarError(
                f"{HF_KEY}: {name} is not a readable save_to_disk folder ({_short(exc)}) — save it again"
            ) from None
        prov["carregado_com"] = "load_from_disk"
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    else:
        local = folder.is_dir()
        if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise AfinarError(
                f"{HF_KEY}: folder {resolved(name)} not found — fix the path or give a Hub dataset id"
            )
        try:
            builder = datasets.load_dataset_builder(
                str(folder) if local else name, config or None, revision=revision or None, cache_dir=cache_dir
            )
            builder.download_and_prepare()
            loaded = builder.as_dataset()
        except Exception as exc:
            if not local and _hf_offline():
                raise AfinarError(
                    f"{HF_KEY}: {name} is not in the local cache and the machine is offline (HF_DATASETS_OFFLINE/"
                    "HF_HUB_OFFLINE) — the dataset must already be in the local cache or a local folder "
                    "(save_to_disk, or a folder of parquet shards)"
                ) from None
            raise AfinarError(
                f"{HF_KEY}: cannot load {name}"
                + (f" (config {config!r})" if config else "")
                + (f" at revision {revision!r}" if revision else "")
                + f": {_short(exc)} — check the name, hf_config and hf_revision"
            ) from None
        prov["carregado_com"] = "load_dataset"
        prov["revisao_resolvida"] = getattr(builder, "hash", None)
        prov["config"] = builder.config.name
        version = getattr(builder.info, "version", None)
        prov["versao"] = str(version) if version is not None else None
        splits = dict(loaded)
    prov["fingerprints"] = {split: getattr(ds, "_fingerprint", None) for split, ds in splits.items()}
    prov["splits"] = {split: ds.num_rows for split, ds in splits.items()}
    return splits, prov


def load_hf_sources(
    dataset: dict[str, Any], cache_dir: str | None = None
) -> tuple[dict[str, Records], dict[str, Any]]:
    """``dataset.hf_dataset`` → (role → records, provenance). Splits come from ``dataset.hf_splits``."""
    name = str(dataset["hf_dataset"]).strip()
    ignored = [k for k in ("train_file", "eval_file", "test_file") if str(dataset.get(k) or "").strip()]
    if ignored:
        log.warning("dataset.hf_dataset is set: %s ignored", ", ".join(f"dataset.{k}" for k in ignored))
    splits, prov = open_hf_dataset(
        name, str(dataset.get("hf_config") or ""), str(dataset.get("hf_revision") or ""), cache_dir
    )
    wanted = {**DEFAULT_HF_SPLITS, **{k: v for k, v in (dataset.get("hf_splits") or {}).items()}}
    available = ", ".join(sorted(splits)) or "none"
    col = str(dataset.get("train_prompt_col") or "messages")
    sources: dict[str, Records] = {}
    keys: dict[str, str] = {}
    for role in ("treino", "validacao", "teste"):
        split = str(wanted.get(role) or "").strip()
        key = f"dataset.hf_splits.{role}"
        if not split:
            continue
        if split not in splits:
            if role == "treino" or split != DEFAULT_HF_SPLITS[role]:
                raise AfinarError(
                    f"{key}: {name} has no split {split!r} (splits: {available}) — name one of those"
                )
            log.info("%s: no %r split: %s is carved from the training split", name, split, role)
            continue
        rows = splits[split].to_list()
        sources[role] = _records_of_rows(rows, f"{name}[{split}]", HF_KEY, role, dataset, col)
        keys[role] = f"{HF_KEY} split {split!r}"
    prov["usados"] = {role: wanted[role] for role in sources}
    _check_unique_owner(sources, keys)
    return sources, prov


def carve_splits(sources: dict[str, Records], divisao: dict[str, Any]) -> dict[str, Records]:
    """The three splits: given files as they are, the missing test (and validation) carved from treino."""
    train = sources["treino"]
    if "teste" in sources:
        return {"treino": train, "validacao": sources.get("validacao", Records()), "teste": sources["teste"]}
    proportions = dict(divisao["proporcao"])
    if "validacao" in sources:
        proportions["validacao"] = 0.0
    division = assign_splits(train.ids, proportions, int(divisao["seed"]))
    wanted = {s: set(division.loc[division["alvo"] == s, "id_arquivo"]) for s in SPLITS}
    carved = {s: train.subset(wanted[s]) for s in SPLITS}
    if "validacao" in sources:
        carved["validacao"] = sources["validacao"]
    return carved


def run_dataset_split(
    dataset: dict[str, Any], divisao: dict[str, Any], outputs: SplitOutputs
) -> dict[str, Any]:
    """The whole ``split`` stage in dataset mode; return the ``divisao.json`` report."""
    hub = None
    if str(dataset.get("hf_dataset") or "").strip():
        sources, hub = load_hf_sources(dataset)
    else:
        sources = load_sources(dataset)
    splits = carve_splits(sources, divisao)
    counts = {s: len(splits[s]) for s in SPLITS}
    configured = divisao["proporcao"]
    check_counts(counts, configured, "dataset")
    division = pd.DataFrame(
        {
            "id_arquivo": [rid for s in SPLITS for rid in splits[s].ids],
            "alvo": [s for s in SPLITS for _ in splits[s].ids],
        }
    )
    origin = "dataset" if "teste" in sources else "dataset (teste recortado do treino)"
    return write_outputs(
        {s: splits[s].table() for s in SPLITS},
        division,
        outputs,
        configured,
        origin,
        divisao["seed"],
        extra={"hf_dataset": hub} if hub else None,
    )
