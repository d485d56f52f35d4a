"""The ``split`` stage: assign every pair to treino / validacao / teste and build the chat messages.

The assignment is either read from the user's division file (``pastas.divisao.arquivo``), created there
once when it is configured but missing, or computed for this run. It is deterministic: records are
ranked by a hash of their id and the seed (see :func:`shuffle_ids`), so the same ids and seed give the
same split whatever the file order, machine or Python version; ``divisao.json`` reports the effective
proportions next to the configured ones.

The user's division file is never rewritten: labels from older tools (``avaliacao``, ``eval``,
``train``, ...) are migrated into ``results/data/divisao.csv``, which is what the rest of the workflow
reads. Split files hold ``id`` and ``messages`` (user prompt from the template, assistant answer).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from afinar import layout
from afinar.data.pairing import PRIVATE_MODE, format_ids, nfc, read_text
from afinar.errors import AfinarError
from afinar.io import atomic_path, atomic_write_json

log = logging.getLogger("afinar.data.splits")

SPLITS = layout.SPLITS
ID_COLUMN, LABEL_COLUMN = "id_arquivo", "alvo"
PROTECTED_MODE = 0o444
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SPLIT_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGE_TYPE)])

# Labels written by the original tool and its predecessors (and English ones), mapped to ours (bug B7).
LABEL_ALIASES = {
    "treino": "treino",
    "treinamento": "treino",
    "train": "treino",
    "training": "treino",
    "validacao": "validacao",
    "validação": "validacao",
    "avaliacao": "validacao",
    "avaliação": "validacao",
    "eval": "validacao",
    "evaluation": "validacao",
    "validation": "validacao",
    "valid": "validacao",
    "val": "validacao",
    "dev": "validacao",
    "teste": "teste",
    "test": "teste",
    "testing": "teste",
}


@dataclass(frozen=True)
class SplitOutputs:
    """Where the split stage writes (``results/data/...`` in the workflow)."""

    treino: Path
    validacao: Path
    teste: Path
    divisao_csv: Path
    divisao_json: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> SplitOutputs:
        """The contract's file names inside ``folder``."""
        folder = Path(folder)
        return cls(
            treino=folder / "treino.parquet",
            validacao=folder / "validacao.parquet",
            teste=folder / "teste.parquet",
            divisao_csv=folder / "divisao.csv",
            divisao_json=folder / "divisao.json",
        )

    def split_path(self, name: str) -> Path:
        """Path of one split's parquet."""
        path: Path = getattr(self, name)
        return path


# --- assignment -------------------------------------------------------------------------------------


def shuffle_ids(ids: Iterable[str], seed: int) -> list[str]:
    """Deterministic shuffle: order ids by SHA-256 of ``"<seed>:<id>"`` (ties, impossible in practice, by id).

    Unlike ``random.shuffle`` this depends neither on the input order nor on Python's version, and a
    record keeps its rank relative to the others when records are added or removed.
    """
    return sorted(ids, key=lambda rid: (hashlib.sha256(f"{seed}:{rid}".encode()).digest(), rid))


def split_counts(n: int, proportions: dict[str, float]) -> dict[str, int]:
    """Counts per split for ``n`` records: largest-remainder rounding, so they sum to ``n`` exactly
    and each is within one record of its exact share (ties go to treino, then validacao, then teste)."""
    total = sum(proportions[s] for s in SPLITS)
    if total <= 0:
        raise AfinarError(
            "pastas.divisao.proporcao: proportions sum to 0 — give treino/validacao/teste shares"
        )
    quotas = {s: n * proportions[s] / total for s in SPLITS}
    counts = {s: math.floor(q) for s, q in quotas.items()}
    remainders = sorted(SPLITS, key=lambda s: (-(quotas[s] - counts[s]), SPLITS.index(s)))
    for s in remainders[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


def assign_splits(ids: Sequence[str], proportions: dict[str, float], seed: int) -> pd.DataFrame:
    """A division table (``id_arquivo``, ``alvo``) for ``ids``, sorted by id."""
    order = shuffle_ids(ids, seed)
    counts = split_counts(len(order), proportions)
    labels = [s for s in SPLITS for _ in range(counts[s])]
    frame = pd.DataFrame(
        {ID_COLUMN: pd.Series(order, dtype=object), LABEL_COLUMN: pd.Series(labels, dtype=object)}
    )
    return frame.sort_values(ID_COLUMN, kind="stable").reset_index(drop=True)


def normalize_label(label: Any) -> str | None:
    """Our label for a division label (``avaliação`` → ``validacao``), or ``None`` if unknown."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return None
    return LABEL_ALIASES.get(str(label).strip().lower())


def read_division(path: str | Path) -> tuple[pd.DataFrame, int]:
    """Read a user's division CSV with ids as strings; return (normalized table, number of migrated labels).

    Extra columns are tolerated and dropped. Unknown labels, missing columns and duplicate ids are
    errors naming the file, because any of them would silently move records between splits.
    """
    key = f"pastas.divisao.arquivo {str(path)!r}"
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AfinarError(
            f"{key}: not a readable CSV ({str(exc).splitlines()[0]}) — fix it or delete it to regenerate"
        ) from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in (ID_COLUMN, LABEL_COLUMN) if c not in raw.columns]
    if missing:
        raise AfinarError(
            f"{key}: column(s) {', '.join(missing)} missing (found: {', '.join(raw.columns) or 'none'}) — "
            f"the file needs {ID_COLUMN},{LABEL_COLUMN}; delete it to regenerate"
        )
    ids = raw[ID_COLUMN].str.strip()
    composed = ids.map(nfc)  # pair ids are NFC (afinar.data.pairing.nfc); the file may be NFD
    if (composed != ids).any():
        log.info(
            "%s: %d id(s) written with decomposed accents (Unicode NFD), matched in composed form (NFC)",
            path,
            int((composed != ids).sum()),
        )
        ids = composed
    labels = pd.Series([normalize_label(v) for v in raw[LABEL_COLUMN]], index=raw.index, dtype=object)
    unknown = sorted({str(v) for v, lab in zip(raw[LABEL_COLUMN], labels, strict=True) if lab is None})
    if unknown:
        raise AfinarError(
            f"{key}: unknown {LABEL_COLUMN} value(s) {format_ids([repr(u) for u in unknown])} — use treino, "
            "validacao or teste"
        )
    empty = int((ids == "").sum())
    if empty:
        raise AfinarError(f"{key}: {empty} row(s) have an empty {ID_COLUMN} — fill or remove them")
    dupes = sorted(ids[ids.duplicated()].unique())
    if dupes:
        raise AfinarError(
            f"{key}: id(s) listed more than once: {format_ids(list(dupes))} — keep one row per id"
        )
    migrated = int((raw[LABEL_COLUMN] != labels).sum())
    frame = pd.DataFrame({ID_COLUMN: ids.astype(object), LABEL_COLUMN: labels.astype(object)})
    return frame, migrated


def check_division(
    division: pd.DataFrame,
    pair_ids: Iterable[str],
    validate_ids: bool,
    path: str | Path,
    excluded_ids: Iterable[str] = (),
) -> pd.DataFrame:
    """Check a division file against the pairs both ways (spec §3.3); return the rows to use.

    Ids of the file that are not pairs are always an error — except ``excluded_ids``, records that
    exist but were skipped as invalid upstream under ``skip_invalidos`` (dropped with a warning).
    Pairs missing from the file are an error with ``validar_ids: true``, else left out with a warning.
    """
    pairs = set(pair_ids)
    excluded = set(excluded_ids) - pairs
    listed = division[ID_COLUMN]
    in_file_only = sorted(set(listed) - pairs - excluded)
    not_in_file = sorted(pairs - set(listed))
    skipped = sorted(set(listed) & excluded)
    problems = []
    if in_file_only:
        problems.append(
            f"{len(in_file_only)} id(s) of the file are not among the pairs: {format_ids(in_file_only)}"
        )
    if not_in_file and validate_ids:
        problems.append(
            f"{len(not_in_file)} paired id(s) are missing from the file: {format_ids(not_in_file)}"
        )
    if problems:
        raise AfinarError(
            f"pastas.divisao.arquivo {str(path)!r} ({len(division)} ids) does not match the {len(pairs)} pairs: "
            + "; ".join(problems)
            + f" — delete {str(path)!r} to regenerate it"
        )
    if not_in_file:
        log.warning(
            "%d paired id(s) are not in %s and are left out (validar_ids: false): %s",
            len(not_in_file),
            path,
            format_ids(not_in_file),
        )
    if skipped:
        log.warning(
            "%d id(s) of %s were skipped upstream as invalid: %s", len(skipped), path, format_ids(skipped)
        )
    return division[listed.isin(pairs)].reset_index(drop=True)


def _write_division_csv(frame: pd.DataFrame, path: str | Path, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        frame[[ID_COLUMN, LABEL_COLUMN]].to_csv(tmp, index=False)


def resolve_division(
    pair_ids: Sequence[str], divisao: dict[str, Any], excluded_ids: Iterable[str] = ()
) -> tuple[pd.DataFrame, str]:
    """The division to use and where it came from (``arquivo``, ``criado`` or ``gerado``).

    ``divisao`` is the normalized ``pastas.divisao`` section. ``criado`` means a file is configured
    but does not exist yet: the caller saves the fresh assignment there (:func:`save_created_division`)
    once the split succeeded, so later runs reuse it and a sweep keeps comparing models on one split.
    """
    user_file = str(divisao.get("arquivo") or "").strip()
    if user_file and Path(user_file).exists():
        frame, migrated = read_division(user_file)
        if migrated:
            log.info(
                "migrated %d old label(s) of %s (the file itself is left unchanged)", migrated, user_file
            )
        return check_division(
            frame, pair_ids, bool(divisao["validar_ids"]), user_file, excluded_ids
        ), "arquivo"
    frame = assign_splits(pair_ids, divisao["proporcao"], int(divisao["seed"]))
    return frame, ("criado" if user_file else "gerado")


@contextmanager
def division_file_lock(divisao: dict[str, Any]) -> Iterator[None]:
    """Hold an exclusive lock on the configured division file while it is read or created.

    Two runs (two configs, or two working directories) may share one ``pastas.divisao.arquivo``. Without
    the lock both could find it missing, both create it, and one would train on splits that do not match
    the file on disk. With it the second waits, then reads the file the first wrote. The lock is
    ``flock`` on the file's folder itself, so no lock file is added to the user's folder, and the kernel
    drops it when a process dies: a killed run never leaves it held.
    """
    user_file = str(divisao.get("arquivo") or "").strip()
    if not user_file:
        yield
        return
    folder = Path(user_file).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("%s is being read or created by another run: waiting for it", user_file)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_created_division(division: pd.DataFrame, divisao: dict[str, Any]) -> None:
    """Write a newly assigned division at the user's configured path, read-only, for later runs to reuse.

    Called only once every check has passed, so a failed run leaves no division file behind.
    """
    user_file = str(divisao.get("arquivo") or "").strip()
    _write_division_csv(division, user_file, PROTECTED_MODE)
    log.info("created %s (%d ids, read-only); later runs reuse it", user_file, len(division))


# --- messages ---------------------------------------------------------------------------------------


def read_template(path: str | Path, key: str = "pastas.entrada.prompt_template") -> str:
    """Read a prompt template once (UTF-8, latin-1 fallback); a missing file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise AfinarError(f"{key}: file {str(path)!r} does not exist — fix the path")
    return read_text(path)[0]


def build_prompt(template: str, tag: str, text: str) -> str:
    """The user message: ``template`` with every ``tag`` replaced by ``text``.

    No template → the text itself. A template without the tag gets the text appended after a blank
    line (the original's behaviour, kept so seed templates produce the same prompts).
    """
    if not template:
        return text
    if tag and tag in template:
        return template.replace(tag, text)
    return f"{template.rstrip()}\n\n{text}"


def messages_table(ids: Sequence[str], prompts: Sequence[str], answers: Sequence[str]) -> pa.Table:
    """Arrow table ``id, messages`` with a fixed schema, so an empty split has the right column types."""
    messages = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
        for p, a in zip(prompts, answers, strict=True)
    ]
    return pa.table([pa.array(list(ids), pa.string()), pa.array(messages, MESSAGE_TYPE)], schema=SPLIT_SCHEMA)


def write_split(table: pa.Table, path: str | Path) -> None:
    """Write one split parquet atomically with mode 0600 (it holds decrypted text)."""
    with atomic_path(path, PRIVATE_MODE) as tmp:
        pq.write_table(table, tmp)


def proportions_report(configured: dict[str, float], counts: dict[str, int], source: str, seed: int) -> dict:
    """The ``divisao.json`` content: configured vs effective proportions and counts."""
    total = sum(counts.values())
    return {
        "proporcao_config": {s: float(configured[s]) for s in SPLITS},
        "proporcao_efetiva": {s: round(counts[s] / total, 4) if total else 0.0 for s in SPLITS},
        "contagens": {**{s: int(counts[s]) for s in SPLITS}, "total": int(total)},
        "origem": source,
        "seed": int(seed),
    }


def check_counts(counts: dict[str, int], configured: dict[str, float], where: str) -> None:
    """Empty treino or teste is an error; empty validacao only when its proportion is not 0."""
    for name in ("treino", "teste"):
        if counts[name] == 0:
            raise AfinarError(
                f"{where}: the {name} split is empty ({sum(counts.values())} records, proporcao {name}: "
                f"{configured[name]}) — add records or raise its proportion"
            )
    if counts["validacao"] == 0 and configured["validacao"] > 0:
        log.warning(
            "the validacao split is empty although proporcao validacao is %s", configured["validacao"]
        )


def write_outputs(
    tables: dict[str, pa.Table],
    division: pd.DataFrame,
    outputs: SplitOutputs,
    configured: dict[str, float],
    source: str,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the three splits, ``divisao.csv`` and ``divisao.json`` (plus ``extra`` keys); return the report."""
    counts = {s: tables[s].num_rows for s in SPLITS}
    report = {**proportions_report(configured, counts, source, seed), **(extra or {})}
    for name in SPLITS:
        write_split(tables[name], outputs.split_path(name))
    _write_division_csv(division, outputs.divisao_csv)
    atomic_write_json(outputs.divisao_json, report)
    log.info(
        "split: treino %d | validacao %d | teste %d (effective %s)",
        counts["treino"],
        counts["validacao"],
        counts["teste"],
        report["proporcao_efetiva"],
    )
    return report


def split_pairs(pairs: pa.Table, division: pd.DataFrame, template: str, tag: str) -> dict[str, pa.Table]:
    """Build the three split tables from the plain pairs and a checked division (rows sorted by id)."""
    label_of = dict(zip(division[ID_COLUMN], division[LABEL_COLUMN], strict=True))
    ids = pairs.column("id").to_pylist()
    texts = pairs.column("texto").to_pylist()
    answers = pairs.column("resposta").to_pylist()
    buckets: dict[str, tuple[list[str], list[str], list[str]]] = {s: ([], [], []) for s in SPLITS}
    for rid, text, answer in sorted(zip(ids, texts, answers, strict=True), key=lambda r: r[0]):
        label = label_of.get(rid)
        if label is None:
            continue
        b_ids, b_prompts, b_answers = buckets[label]
        b_ids.append(rid)
        b_prompts.append(build_prompt(template, tag, text))
        b_answers.append(answer)
    return {s: messages_table(*buckets[s]) for s in SPLITS}


def read_pairs(path: str | Path) -> pa.Table:
    """Read a (plain) pairs parquet with the contract's columns."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise AfinarError(f"{path}: not a readable parquet file ({exc}) — rerun the pair stage") from None
    missing = {"id", "texto", "resposta"} - set(table.column_names)
    if missing:
        raise AfinarError(f"{path}: column(s) {', '.join(sorted(missing))} missing — rerun the pair stage")
    return table


def excluded_upstream(
    summary_path: str | Path | None, pairs_path: str | Path | None, plain_ids: Iterable[str]
) -> set[str]:
    """Ids that exist in the raw data but were skipped upstream (invalid answers, undecryptable texts)."""
    excluded: set[str] = set()
    if summary_path and Path(summary_path).is_file():
        summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
        excluded |= {str(item["id"]) for item in summary.get("invalidos", [])}
    if pairs_path and Path(pairs_path).is_file():
        excluded |= set(pq.read_table(pairs_path, columns=["id"]).column("id").to_pylist()) - set(plain_ids)
    return excluded


def run_split(
    pairs_path: str | Path,
    outputs: SplitOutputs,
    divisao: dict[str, Any],
    template_path: str | Path | None,
    tag: str,
    summary_path: str | Path | None = None,
    raw_pairs_path: str | Path | None = None,
) -> dict[str, Any]:
    """The whole ``split`` stage in ``pastas`` mode; return the ``divisao.json`` report.

    ``summary_path`` (``pareamento.json``) and ``raw_pairs_path`` (``pairs.parquet``) tell which ids
    were skipped upstream, so a division file that still lists them is not taken as inconsistent.
    """
    template = read_template(template_path) if template_path else ""
    if template and not tag:
        log.warning(
            "pastas.entrada.tag_texto is empty: the text is appended to the template after a blank line"
        )
    elif template and tag not in template:
        log.warning("tag %r is not in the template: the text is appended after a blank line", tag)
    pairs = read_pairs(pairs_path)
    ids = pairs.column("id").to_pylist()
    excluded = excluded_upstream(summary_path, raw_pairs_path, ids)
    with division_file_lock(divisao):
        division, source = resolve_division(ids, divisao, excluded)
        tables = split_pairs(pairs, division, template, tag)
        counts = {s: tables[s].num_rows for s in SPLITS}
        check_counts(counts, divisao["proporcao"], f"pastas.divisao ({source})")
        if source == "criado":
            save_created_division(division, divisao)
    return write_outputs(tables, division, outputs, divisao["proporcao"], source, int(divisao["seed"]))


def split_input_function(
    cfg: dict[str, Any], data_dir: str = "results/data"
) -> Callable[[Any], dict[str, str]]:
    """The ``split`` rule's input function for a normalized config.

    pastas mode: the plain pairs plus what tells which ids were skipped upstream, and the user's
    division file when it exists (so editing it reruns split). dataset mode: the dataset files. Both:
    the prompt template, so editing it reruns split.
    """

    def split_inputs(wildcards: Any) -> dict[str, str]:
        if cfg["formatos"]["tipo_entrada"] == "dataset":
            ds = cfg["dataset"]
            files = {
                role: ds[key]
                for role, key in (("train", "train_file"), ("eval", "eval_file"), ("test", "test_file"))
                if ds[key]
            }
            if ds["hf_dataset"] and Path(ds["hf_dataset"]).expanduser().is_dir():
                files["hf_dataset"] = ds["hf_dataset"]  # a local dataset folder: editing it reruns split
            template = ds["prompt_template"]
        else:
            files = {
                "pairs": f"{data_dir}/pairs.plain.parquet",
                "raw_pairs": f"{data_dir}/pairs.parquet",
                "summary": f"{data_dir}/pareamento.json",
            }
            user_division = cfg["pastas"]["divisao"]["arquivo"]
            if user_division and Path(user_division).is_file():
                files["division"] = user_division
            template = cfg["pastas"]["entrada"]["prompt_template"]
        if template:
            files["template"] = template
        return files

    return split_inputs
