"""The ``pair`` stage: match input texts with expected answers by record id.

Inputs come from a folder of files or from a parquet dataframe (``pastas.entrada``); expected answers
always come from a folder (``pastas.predicao``). A record id is a file name minus its last extension
(``001.txt`` → ``001``, ``a.b.txt`` → ``a.b``) and is always a string, so ``001`` never becomes ``1``.
A pair exists when an id is present on both sides; ids present on one side only are listed in
``pareamento.json`` (the original only counted them). Answers are normalized by
:mod:`afinar.data.answers`; rejected ones stop the run unless ``skip_invalidos`` is on.

Input texts may be ciphertext (dataframe mode): they are carried through untouched and never logged.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from afinar.config.aliases import glob_mask as glob_mask  # the one mask rule (validate uses it too)
from afinar.config.checks import entrada_problems
from afinar.data.answers import normalize_answer
from afinar.errors import AfinarError
from afinar.io import atomic_path, atomic_write_json
from afinar.preflight import resolved

log = logging.getLogger("afinar.data.pairing")

PAIRS_SCHEMA = pa.schema([("id", pa.string()), ("texto", pa.string()), ("resposta", pa.string())])
PRIVATE_MODE = 0o600
_SHOWN = 10  # ids quoted in a message before "(+N more)"

_BAD_BYTE = re.compile("[\udc80-\udcff]")
_NON_ASCII_CHAR = re.compile("[^\x00-\x7f\udc80-\udcff]")


def format_ids(ids: list[str], shown: int = _SHOWN) -> str:
    """``a, b, c (+7 more)``: enough ids to find the problem without flooding a one-line message."""
    head = ", ".join(ids[:shown])
    return head + (f" (+{len(ids) - shown} more)" if len(ids) > shown else "")


def raw_file_id(path: str | Path) -> str:
    """A file's name minus the last extension, exactly as the file system spells it."""
    name = Path(path).name
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def nfc(text: str) -> str:
    """Unicode NFC: ``ação`` typed composed or decomposed (as macOS names files) becomes one string."""
    return unicodedata.normalize("NFC", text)


def file_id(path: str | Path) -> str:
    """Record id of a file: its name minus the last extension (``a.b.txt`` → ``a.b``), in Unicode NFC."""
    return nfc(raw_file_id(path))


def list_files(folder: str | Path, mask: str, key: str = "pastas", strict: bool = True) -> list[Path]:
    """Regular files of ``folder`` (not subfolders) whose name matches the glob ``mask``, sorted.

    Hidden files (``.name``) are left out unless the mask itself starts with a dot, as shell globs do,
    so editor and OS droppings never become records. With ``strict=False`` a missing folder yields
    ``[]`` instead of an error (the workflow's input functions use that while building the DAG).
    """
    raw = str(folder or "").strip()
    folder = Path(raw)
    pattern = glob_mask(mask, f"{key}.mascara")
    if not raw or not folder.is_dir():
        if not strict:
            return []
        if not raw:
            raise AfinarError(f"{key}.pasta: not set — give the folder of files")
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise AfinarError(f"{key}.pasta: {resolved(raw)} {what} — fix the path in the config")
    hidden_ok = pattern.startswith(".")
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if (entry.name.startswith(".") and not hidden_ok) or not fnmatch.fnmatchcase(entry.name, pattern):
                continue
            if entry.is_file():
                found.append(Path(entry.path))
    return sorted(found)


def files_by_id(folder: str | Path, mask: str, key: str) -> dict[str, Path]:
    """Map id → file for one folder; an id shared by two files (``a.txt``, ``a.json``) is an error."""
    files = list_files(folder, mask, key)
    if not files:
        others = sorted(p.name for p in Path(folder).iterdir() if p.is_file())[:3]
        hint = f" (it holds other files, e.g. {', '.join(others)})" if others else " (it is empty)"
        raise AfinarError(
            f"{key}.pasta {str(folder)!r}: no file matches mask {glob_mask(mask, key + '.mascara')!r}{hint} "
            f"— check {key}.mascara or the folder"
        )
    by_id: dict[str, Path] = {}
    clashes: list[str] = []
    for path in files:
        rid = file_id(path)
        if rid in by_id:
            same = " (the names differ only in Unicode normalisation, NFC vs NFD)"
            other = by_id[rid].name
            clashes.append(f"{other}/{path.name}{same if nfc(other) == nfc(path.name) else ''}")
        by_id[rid] = path
    if clashes:
        raise AfinarError(
            f"{key}.pasta {str(folder)!r}: several files give the same id: {format_ids(clashes)} — "
            f"narrow {key}.mascara (e.g. '*.txt') so one file per id matches"
        )
    return by_id


class Decoded(NamedTuple):
    """A text file's content and how it was decoded."""

    text: str
    latin1: bool  # not UTF-8 at all: read as latin-1
    replaced: int  # bytes that were not valid UTF-8 in an otherwise UTF-8 file, replaced by U+FFFD


def decode_text(data: bytes) -> Decoded:
    """UTF-8 (a BOM is dropped); a few bad bytes in UTF-8 text are replaced; otherwise latin-1.

    A file is taken as UTF-8 with stray bytes when it holds valid multi-byte UTF-8 characters and no
    more invalid bytes than valid characters: a latin-1 file's accented letters are invalid UTF-8 and
    almost never form valid sequences, while reading a UTF-8 file as latin-1 garbles every accent.
    """
    try:
        return Decoded(data.decode("utf-8-sig"), False, 0)
    except UnicodeDecodeError:
        pass
    escaped = data.decode("utf-8-sig", errors="surrogateescape")  # each bad byte → one lone surrogate
    bad = len(_BAD_BYTE.findall(escaped))
    multibyte = len(_NON_ASCII_CHAR.findall(escaped))
    if multibyte and bad <= multibyte:
        return Decoded(_BAD_BYTE.sub("\ufffd", escaped), False, bad)
    return Decoded(data.decode("latin-1"), True, 0)


def read_text_decoded(path: str | Path) -> Decoded:
    """Read a text file with :func:`decode_text`."""
    return decode_text(Path(path).read_bytes())


def read_text(path: str | Path) -> tuple[str, bool]:
    """Read a text file (see :func:`decode_text`); return (text, used_latin1)."""
    decoded = read_text_decoded(path)
    return decoded.text, decoded.latin1


def read_input_frame(path: str | Path, text_col: str, id_col: str) -> dict[str, str | None]:
    """Read ``id_col`` → ``text_col`` from a parquet file; ids become strings, duplicates are errors.

    Only the two columns are read, so a wide export costs no more than its texts. Integer ids become
    their decimal string; float ids that are whole numbers (an integer column with gaps, as pandas
    writes it) become integers first, so ``12.0`` is not an id.
    """
    key = "pastas.entrada.dataframe"
    path = Path(path)
    if not path.is_file():
        raise AfinarError(f"{key}: file {resolved(str(path))} does not exist — fix the path in the config")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise AfinarError(
            f"{key} {str(path)!r}: not a readable parquet file ({exc}) — re-export it"
        ) from None
    missing = [c for c in (id_col, text_col) if c not in schema.names]
    if missing:
        raise AfinarError(
            f"{key} {str(path)!r}: column(s) {', '.join(map(repr, missing))} not found (columns: "
            f"{', '.join(schema.names)}) — fix pastas.entrada.dataframe_col / dataframe_id"
        )
    try:
        table = pq.read_table(path, columns=[id_col, text_col])
    except (pa.ArrowException, OSError) as exc:
        raise AfinarError(
            f"{key} {str(path)!r}: not a readable parquet file ({exc}) — re-export it"
        ) from None
    ids = _ids_as_strings(table.column(id_col), f"{key} {str(path)!r} column {id_col!r}")
    texts = _texts_as_strings(table.column(text_col))
    seen: dict[str, int] = {}
    dupes: list[str] = []
    for rid in ids:
        seen[rid] = seen.get(rid, 0) + 1
        if seen[rid] == 2:
            dupes.append(rid)
    if dupes:
        raise AfinarError(
            f"{key} {str(path)!r}: {len(dupes)} id(s) appear more than once in column {id_col!r}: "
            f"{format_ids(dupes)} — each record needs a unique id"
        )
    return dict(zip(ids, texts, strict=True))


def _ids_as_strings(column: pa.ChunkedArray, where: str) -> list[str]:
    """The id column as NFC strings (ids are matched in NFC: see :func:`nfc`)."""
    return [nfc(v) for v in _ids_as_raw_strings(column, where)]


def _ids_as_raw_strings(column: pa.ChunkedArray, where: str) -> list[str]:
    if column.null_count:
        raise AfinarError(f"{where}: {column.null_count} row(s) have no id — fill or drop them")
    kind = column.type
    if pa.types.is_floating(kind):
        values = column.to_pylist()
        if all(float(v).is_integer() for v in values):
            return [str(int(v)) for v in values]
        return [repr(v) for v in values]
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [v.decode("utf-8", "replace") for v in column.to_pylist()]
    return [str(v) for v in column.to_pylist()]


def _texts_as_strings(column: pa.ChunkedArray) -> list[str | None]:
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()]
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    texts: list[str | None] = column.to_pylist()
    return texts


@dataclass
class PairingResult:
    """Paired records plus everything the user needs to see about what was left out."""

    ids: list[str]
    texts: list[str]
    answers: list[str]
    input_only: list[str] = field(default_factory=list)
    answer_only: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    latin1: list[str] = field(default_factory=list)
    n_inputs: int = 0
    n_answers: int = 0
    #: UTF-8 files with a few invalid bytes (replaced by U+FFFD): {"arquivo": path, "bytes": count}
    replaced: list[dict[str, Any]] = field(default_factory=list)
    #: ids that matched only once their Unicode normalisation was made the same (NFC)
    normalised: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The ``pareamento.json`` content (architecture contract keys first)."""
        return {
            "n_pares": len(self.ids),
            "entrada_sem_par": self.input_only,
            "predicao_sem_par": self.answer_only,
            "invalidos": self.invalid,
            "latin1": self.latin1,
            "utf8_bytes_invalidos": self.replaced,
            "ids_normalizados_nfc": self.normalised,
            "n_entrada": self.n_inputs,
            "n_predicao": self.n_answers,
            "n_invalidos": len(self.invalid),
        }

    def table(self) -> pa.Table:
        """The pairs as an Arrow table with the contract's columns ``id, texto, resposta``."""
        return pa.table([self.ids, self.texts, self.answers], schema=PAIRS_SCHEMA)


def _dataframe_path(entrada: dict[str, Any]) -> str:
    value = entrada["dataframe"]
    if isinstance(value, bool) or str(value).strip().lower() in {"true", "false", "sim", "yes", "no"}:
        raise AfinarError(
            f"pastas.entrada.dataframe: {value!r} is not a path — give the parquet file itself "
            "(dataframe: ./textos.parquet) with dataframe_col (text column) and dataframe_id (id column)"
        )
    return str(value or "").strip()


def pair_records(
    entrada: dict[str, Any], predicao: dict[str, Any], validacao: dict[str, Any], formatos: dict[str, Any]
) -> PairingResult:
    """Pair inputs with expected answers per ``pastas.*`` (normalized config sections); raise on bad input."""
    dataframe = _dataframe_path(entrada)
    problems = entrada_problems(entrada)  # the config check, for callers that skip load_config
    if problems:
        raise AfinarError(problems[0])
    answers_by_id = files_by_id(predicao["pasta"], predicao["mascara"], "pastas.predicao")
    if dataframe:
        frame_texts = read_input_frame(dataframe, entrada["dataframe_col"], entrada["dataframe_id"])
        input_ids: set[str] = set(frame_texts)
        input_files: dict[str, Path] = {}
        input_where = f"pastas.entrada.dataframe {dataframe!r}"
    else:
        input_files = files_by_id(entrada["pasta"], entrada["mascara"], "pastas.entrada")
        frame_texts = {}
        input_ids = set(input_files)
        input_where = f"pastas.entrada.pasta {str(entrada['pasta'])!r}"
    answer_ids = set(answers_by_id)
    common = sorted(input_ids & answer_ids)
    input_only = sorted(input_ids - answer_ids)
    answer_only = sorted(answer_ids - input_ids)
    if not common:
        raise AfinarError(_no_pairs_message(input_where, sorted(input_ids), sorted(answer_ids)))

    require_json = bool(validacao["exigir_json_valido"])
    json_output = formatos.get("formato_saida", "json") == "json"
    ids: list[str] = []
    texts: list[str] = []
    answers: list[str] = []
    invalid: list[dict[str, str]] = []
    invalid_files: list[str] = []
    latin1: list[str] = []
    replaced: list[dict[str, Any]] = []

    def read(path: Path) -> str:
        decoded = read_text_decoded(path)
        if decoded.latin1:
            latin1.append(str(path))
        if decoded.replaced:
            replaced.append({"arquivo": str(path), "bytes": decoded.replaced})
        return decoded.text

    for rid in common:
        answer_path = answers_by_id[rid]
        raw = read(answer_path)
        if dataframe:
            text = frame_texts[rid]
            source = f"{dataframe}[{rid}]"
        else:
            text = read(input_files[rid])
            source = str(input_files[rid])
        if text is None or not text.strip():
            invalid.append({"id": rid, "motivo": "empty input text"})
            invalid_files.append(f"{source} (empty input text)")
            continue
        answer = normalize_answer(raw, require_json, json_output)
        if not answer.ok:
            invalid.append({"id": rid, "motivo": answer.reason})
            invalid_files.append(f"{answer_path} ({answer.reason})")
            continue
        ids.append(rid)
        texts.append(text.strip())
        answers.append(answer.text)

    if invalid and not validacao["skip_invalidos"]:
        raise AfinarError(
            f"{len(invalid)} of {len(common)} pairs are invalid: {format_ids(invalid_files, 3)} — "
            + invalid_hint([i["motivo"] for i in invalid], len(common), formatos)
        )
    if invalid:
        log.warning(
            "skipped %d invalid pair(s) (listed in pareamento.json): %s",
            len(invalid),
            format_ids([i["id"] for i in invalid]),
        )
    if not ids:
        raise AfinarError(
            f"all {len(common)} pairs are invalid (e.g. {format_ids(invalid_files, 3)}) — "
            + invalid_hint([i["motivo"] for i in invalid], len(common), formatos)
        )
    if latin1:
        log.warning(
            "%d file(s) are not UTF-8 and were read as latin-1: %s", len(latin1), format_ids(latin1, 3)
        )
    if replaced:
        log.warning(
            "%d UTF-8 file(s) hold invalid bytes, replaced by U+FFFD (listed in pareamento.json): %s",
            len(replaced),
            format_ids([f"{r['arquivo']} ({r['bytes']} bytes)" for r in replaced], 3),
        )
    normalised = _normalisation_differences(common, input_files, answers_by_id)
    if input_only:
        log.warning("%d input id(s) without an expected answer: %s", len(input_only), format_ids(input_only))
    if answer_only:
        log.warning("%d answer id(s) without an input: %s", len(answer_only), format_ids(answer_only))
    log.info(
        "%d pairs (%d inputs, %d answers, %d invalid)",
        len(ids),
        len(input_ids),
        len(answer_ids),
        len(invalid),
    )
    return PairingResult(
        ids,
        texts,
        answers,
        input_only,
        answer_only,
        invalid,
        latin1,
        len(input_ids),
        len(answer_ids),
        replaced,
        normalised,
    )


def _normalisation_differences(
    common: list[str], input_files: dict[str, Path], answers_by_id: dict[str, Path]
) -> list[str]:
    """Ids whose input and answer file names differ only in Unicode normalisation, said once.

    macOS and some archive tools write accented names decomposed (NFD: ``a`` + combining tilde), others
    composed (NFC): both look identical on screen. Ids are compared in NFC, so they pair; the files keep
    their names.
    """
    found = []
    for rid in common:
        names = [raw_file_id(answers_by_id[rid])]
        if rid in input_files:
            names.append(raw_file_id(input_files[rid]))
        if any(name != rid for name in names):
            found.append(rid)
    if found:
        log.info(
            "%d id(s) are written with decomposed accents (Unicode NFD) in some file names and matched in "
            "composed form (NFC): %s",
            len(found),
            format_ids(found),
        )
    return found


def invalid_hint(reasons: list[str], n_pairs: int, formatos: dict[str, Any]) -> str:
    """What to do about invalid answers, depending on how many fail and why.

    A few bad files are fixed or skipped (``skip_invalidos``); but when most answers fail the same way
    the setting is wrong, not the files, and skipping them would leave little or nothing to train on:
    answers that are not JSON point to ``formato_saida`` / ``exigir_json_valido``, empty ones to the
    folder and mask.
    """
    json_reasons = sum(1 for r in reasons if r.startswith(("not valid JSON", "JSON ")))
    empty = sum(1 for r in reasons if r == "empty answer")
    if 2 * json_reasons > n_pairs:
        share = "all" if json_reasons == n_pairs else f"{json_reasons} of {n_pairs}"
        if formatos.get("formato_saida", "json") == "json":
            fix = (
                "if they are plain text, set formatos.formato_saida: texto (and drop "
                "pastas.validacao.exigir_json_valido: true if the config sets it)"
            )
        else:
            fix = "set pastas.validacao.exigir_json_valido: false (or remove it: texto answers need no JSON)"
        return f"{share} answers are not JSON objects: {fix}"
    if 2 * empty > n_pairs:
        return (
            "most answer files are empty: check that pastas.predicao.pasta and mascara point to the expected "
            "answers"
        )
    return "fix or remove those files, or set pastas.validacao.skip_invalidos: true to skip them"


def _no_pairs_message(input_where: str, input_ids: list[str], answer_ids: list[str]) -> str:
    """Explain zero pairs with examples from both sides, and spot the classic zero-padding mismatch."""
    hint = ""
    stripped_inputs = {i.lstrip("0") or "0" for i in input_ids}
    if any((a.lstrip("0") or "0") in stripped_inputs for a in answer_ids[:1000]):
        hint = " (the ids differ only in leading zeros: write the dataframe ids as strings, e.g. '001')"
    return (
        f"no pairs: none of the {len(input_ids)} ids of {input_where} (e.g. {format_ids(input_ids, 3)}) matches "
        f"the {len(answer_ids)} ids of pastas.predicao (e.g. {format_ids(answer_ids, 3)}){hint} — an id is "
        "the file name minus its last extension and must be identical on both sides"
    )


def write_pairs(result: PairingResult, pairs_path: str | Path, summary_path: str | Path) -> None:
    """Write ``pairs.parquet`` (mode 0600: it may hold plain private text) and ``pareamento.json``."""
    with atomic_path(pairs_path, PRIVATE_MODE) as tmp:
        pq.write_table(result.table(), tmp)
    atomic_write_json(summary_path, result.summary())


#: a record is "far beyond" the context when its estimated tokens exceed this many times max_seq_length
FAR_BEYOND = 10
#: rough characters per token of natural text, only for that estimate (filter_tokens counts for real)
_CHARS_PER_TOKEN_ESTIMATE = 4


def warn_far_beyond(result: PairingResult, max_seq_length: int | None) -> list[str]:
    """Warn about records far longer than the longest ``max_seq_length`` of the config's experiments.

    They are dropped (or their prompt cut) later by ``filter_tokens``; said here because a 50 MB input
    is usually a mistake (a whole archive in one file), and the user should hear it before any training.
    The size is estimated from characters: the pair stage has no tokenizer.
    """
    if not max_seq_length:
        return []
    found = []
    for rid, text, answer in zip(result.ids, result.texts, result.answers, strict=True):
        tokens = (len(text) + len(answer)) // _CHARS_PER_TOKEN_ESTIMATE
        if tokens > FAR_BEYOND * max_seq_length:
            found.append(f"{rid} (~{tokens:,} tokens)")
    if found:
        log.warning(
            "%d record(s) are far longer than max_seq_length %d (more than %dx, estimated from characters): %s "
            "— filter_tokens will drop them or cut their prompt; check they belong in the data",
            len(found),
            max_seq_length,
            FAR_BEYOND,
            format_ids(found, 3),
        )
    return found


def run_pair(
    entrada: dict[str, Any],
    predicao: dict[str, Any],
    validacao: dict[str, Any],
    formatos: dict[str, Any],
    pairs_path: str | Path,
    summary_path: str | Path,
    max_seq_length: int | None = None,
) -> PairingResult:
    """The whole ``pair`` stage: pair, then write both outputs (nothing is written on error).

    ``max_seq_length`` (the longest of the experiments) only drives the warning of :func:`warn_far_beyond`.
    """
    result = pair_records(entrada, predicao, validacao, formatos)
    warn_far_beyond(result, max_seq_length)
    write_pairs(result, pairs_path, summary_path)
    return result


def raw_input_files(entrada: dict[str, Any], predicao: dict[str, Any]) -> list[str]:
    """Every raw file ``pair`` reads, for the rule's ``input:`` (so editing any of them reruns it).

    Tolerant by design (missing folders give no files, bad masks are left for ``pair`` to report),
    because it runs while Snakemake builds the DAG, where an exception is not a clean one-line error.
    """
    files: list[str] = []
    try:
        files += [
            str(p)
            for p in list_files(predicao["pasta"], predicao["mascara"], "pastas.predicao", strict=False)
        ]
        dataframe = entrada["dataframe"]
        if isinstance(dataframe, str) and dataframe.strip():
            if Path(dataframe).is_file():
                files.append(dataframe)
        else:
            files += [
                str(p)
                for p in list_files(entrada["pasta"], entrada["mascara"], "pastas.entrada", strict=False)
            ]
    except AfinarError:
        pass
    return files


def pair_input_function(cfg: dict[str, Any]) -> Callable[[Any], list[str]]:
    """The ``pair`` rule's input function for a normalized config: the raw files, listed at DAG time."""

    def pair_inputs(wildcards: Any) -> list[str]:
        return raw_input_files(cfg["pastas"]["entrada"], cfg["pastas"]["predicao"])

    return pair_inputs
