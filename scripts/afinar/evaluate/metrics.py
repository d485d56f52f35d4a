"""Task metrics for one prediction against its expected answer: plain functions, no model, no I/O.

Everything here is deterministic and dependency-free (no ``rouge_score``, no NLTK), so the numbers in
``metricas.json`` can be recomputed by hand from the definitions below:

- ``exact_match``: the texts are equal after Unicode NFC, trimming and collapsing whitespace.
- ``rouge_l``: longest common subsequence of word tokens; precision = LCS / generated tokens,
  recall = LCS / expected tokens, F1 their harmonic mean (ROUGE-L with beta = 1, no stemming).
- ``token_f1``: SQuAD-style F1 of the two bags of word tokens.
- JSON answers: ``parse_json`` strips Markdown fences (via ``afinar.data.answers``); ``field_counts`` compares flattened objects key by
  key (dotted keys for nested objects) after value normalisation, giving true/false positives and false
  negatives per field, from which ``prf`` computes precision, recall and F1, micro- or macro-averaged.

Word tokens are maximal runs of Unicode letters/digits (``\\w+``), lower-cased, so accents count
("ação" is one token) and punctuation does not.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from afinar.data.answers import parse_json_answer

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d+)?|[.,]\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 in [0, 1]."""

    precision: float
    recall: float
    f1: float


@dataclass
class FieldCounts:
    """Per-field tallies: tp = present with the right value, fp = predicted but absent or wrong,
    fn = expected but missing or wrong (a wrong value is both a false positive and a false negative,
    the usual convention for extraction tasks)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: FieldCounts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def support(self) -> int:
        """How many times the field was expected."""
        return self.tp + self.fn


# --------------------------------------------------------------------------- text


def normalize_text(text: str) -> str:
    """NFC, trimmed, whitespace runs collapsed to one space (case and punctuation kept)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text or "")).strip()


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs); punctuation and whitespace are separators."""
    return _WORD.findall(unicodedata.normalize("NFC", text or "").lower())


def exact_match(generated: str, expected: str) -> float:
    """1.0 when both texts are equal after ``normalize_text``, else 0.0."""
    return float(normalize_text(generated) == normalize_text(expected))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison–Dix/Hyyrö): one Python big-int operation per token of ``b``, so two answers of
    a few thousand tokens take milliseconds instead of the seconds a quadratic table would in Python.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _prf_from_overlap(overlap: int, n_generated: int, n_expected: int) -> PRF:
    if n_generated == 0 and n_expected == 0:
        return PRF(1.0, 1.0, 1.0)  # two empty answers agree perfectly
    precision = overlap / n_generated if n_generated else 0.0
    recall = overlap / n_expected if n_expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


def rouge_l(generated: str, expected: str) -> PRF:
    """ROUGE-L (LCS-based) precision, recall and F1 on word tokens; two empty texts score 1."""
    gen, ref = word_tokens(generated), word_tokens(expected)
    return _prf_from_overlap(lcs_length(gen, ref), len(gen), len(ref))


def token_f1(generated: str, expected: str) -> float:
    """SQuAD-style F1 over the multisets of word tokens; two empty texts score 1."""
    gen, ref = word_tokens(generated), word_tokens(expected)
    overlap = sum((Counter(gen) & Counter(ref)).values())
    return _prf_from_overlap(overlap, len(gen), len(ref)).f1


# --------------------------------------------------------------------------- JSON


def parse_json(text: str) -> tuple[bool, Any]:
    """Parse a model answer as JSON: ``(True, value)`` or ``(False, None)``; never raises.

    Same rules as for expected answers (``afinar.data.answers.parse_json_answer``): Markdown fences are
    stripped, a sentence around the object is tolerated, and only objects and arrays count — a bare
    number or string is not a structured answer. Sharing the parser means a generated answer is valid
    exactly when the same text would have been accepted as a training target.
    """
    try:
        return True, parse_json_answer(text or "")
    except (ValueError, RecursionError):
        return False, None


def normalize_value(value: Any) -> Any:
    """Canonical form for comparing field values.

    Strings: NFC, lower case, whitespace collapsed; strings that are plain numbers ("1,5", " 2 ",
    "3.0") become numbers. Numbers: ints and integral floats compare equal (``1 == 1.0``); floats are
    rounded to 9 significant digits. Lists keep their order, element-wise normalised; dicts likewise.
    Thousands separators are not interpreted ("1.000" is one, not a thousand): that is ambiguous
    between languages and a wrong guess would be worse than a mismatch.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        number = float(value)
        if number.is_integer():
            return int(number)
        return float(f"{number:.9g}")
    if isinstance(value, str):
        text = normalize_text(value).lower()
        if _NUMBER.match(text):
            return normalize_value(float(text.replace(",", ".")))
        return text
    if isinstance(value, Mapping):
        return {str(k): normalize_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize_value(v) for v in value]
    return normalize_text(str(value)).lower()


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects → ``{"a.b": value}``; lists are leaves (compared whole).

    Empty values (null, "", [], {}) are dropped: for extraction tasks "field not found" is written either
    way by models and annotators, and scoring them as different would punish a correct abstention.
    A top-level list becomes the single field ``""`` (the whole answer).
    """
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value:
                out.update(flatten(value, name))
            elif not _is_empty(value):
                out[name] = value
    elif not _is_empty(obj):
        out[prefix] = obj
    return out


def field_counts(
    generated: Any, expected: Any, fields: Iterable[str] | None = None
) -> dict[str, FieldCounts]:
    """Compare two parsed JSON answers field by field (flattened, normalised values).

    ``generated`` may be None (the answer was not valid JSON): then every expected field is a false
    negative. ``fields`` restricts scoring to those dotted keys (``avaliacao.campos``); a listed field
    matches itself and its nested keys (``partes`` covers ``partes.autor``).
    """
    gen = {k: normalize_value(v) for k, v in flatten(generated).items()} if generated is not None else {}
    ref = {k: normalize_value(v) for k, v in flatten(expected).items()}
    wanted = list(fields) if fields else None

    def keep(key: str) -> bool:
        return wanted is None or any(key == f or key.startswith(f + ".") for f in wanted)

    counts: dict[str, FieldCounts] = {}
    for key in sorted(set(gen) | set(ref)):
        if not keep(key):
            continue
        c = counts.setdefault(key, FieldCounts())
        in_gen, in_ref = key in gen, key in ref
        if in_gen and in_ref and gen[key] == ref[key]:
            c.tp += 1
        else:
            c.fp += int(in_gen)
            c.fn += int(in_ref)
    return counts


def prf(counts: FieldCounts) -> PRF:
    """Precision/recall/F1 from tallies; nothing expected and nothing predicted scores 1 (perfect
    abstention), otherwise an empty denominator gives 0."""
    if counts.tp + counts.fp + counts.fn == 0:
        return PRF(1.0, 1.0, 1.0)
    return _prf_from_overlap(counts.tp, counts.tp + counts.fp, counts.tp + counts.fn)


def micro_macro(per_field: Mapping[str, FieldCounts]) -> dict[str, PRF | None]:
    """Micro average (pooled tallies) and macro average (mean of per-field P, R, F1).

    Returns ``{"micro": PRF|None, "macro": PRF|None}``; None when there are no fields at all (e.g. every
    expected answer was empty), so a report never shows a meaningless 1.0.
    """
    if not per_field:
        return {"micro": None, "macro": None}
    pooled = FieldCounts()
    for c in per_field.values():
        pooled.add(c)
    scores = [prf(c) for c in per_field.values()]
    n = len(scores)
    macro = PRF(
        sum(s.precision for s in scores) / n,
        sum(s.recall for s in scores) / n,
        sum(s.f1 for s in scores) / n,
    )
    return {"micro": prf(pooled), "macro": macro}


def json_equal(generated: Any, expected: Any) -> bool:
    """Two parsed JSON answers are equal after flattening and value normalisation."""
    gen = {k: normalize_value(v) for k, v in flatten(generated).items()}
    ref = {k: normalize_value(v) for k, v in flatten(expected).items()}
    return gen == ref
