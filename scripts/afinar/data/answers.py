"""Normalization of expected answers (the assistant side of a training pair).

The answers usually come from an extraction pipeline run by a bigger model: JSON, often wrapped in a
```json fence, and ``Error: ...`` when that extraction failed. The original tool turned every
unparseable answer into ``{}`` (bug B8), so a model was silently trained to answer ``{}``. Here an
answer is either normalized or rejected with a reason; the caller decides (``skip_invalidos``)
whether a rejection skips the record or stops the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A fence that opens the answer: ``` or ```json (any case), optionally followed by the language tag.
_FENCE_OPEN = re.compile(r"^```[ \t]*(?:json|JSON|Json)?[ \t]*\r?\n?")
_FENCE_CLOSE = re.compile(r"\r?\n?```\s*$")
_BARE_JSON_TAG = re.compile(r"^json[ \t]*\r?\n", re.IGNORECASE)
_MAX_REASON_CHARS = 80


@dataclass(frozen=True)
class Answer:
    """The result of normalizing one expected answer: ``text`` when ``ok``, else ``reason``."""

    ok: bool
    text: str = ""
    reason: str = ""


def strip_fences(raw: str) -> str:
    """Remove a surrounding ```json fence or a leading ``json`` line, as LLM answers often carry."""
    text = raw.strip()
    if text.startswith("```"):
        text = _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", text, count=1), count=1)
    else:
        text = _BARE_JSON_TAG.sub("", text, count=1)
    return text.strip()


def is_error_answer(raw: str) -> bool:
    """True for a failed extraction: the answer starts with ``Error:`` (any case)."""
    return raw.lstrip().lower().startswith("error:")


def parse_json_answer(raw: str) -> object:
    """Parse the JSON object (or array) an answer holds; raise ``ValueError`` with the parser's reason.

    The whole text (fences removed) is tried first; when it does not parse, the span from the first
    ``{`` to the last ``}`` is tried, which recovers answers with a sentence before or after the
    object. Scalars (``42``, ``"x"``) are rejected: a structured answer is always an object or array.
    """
    text = strip_fences(raw)
    if not text:
        raise ValueError("empty answer")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as first:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(
                f"not valid JSON ({first.msg} at line {first.lineno} column {first.colno})"
            ) from None
        try:
            value = json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict | list):
        raise ValueError(f"JSON {type(value).__name__} instead of an object")
    return value


def normalize_answer(raw: str, require_json: bool, json_output: bool = True) -> Answer:
    """Normalize one expected answer.

    ``require_json`` is ``pastas.validacao.exigir_json_valido``: the answer must be a JSON object
    (or array) and is re-serialized on one line (``ensure_ascii=False``, key order kept), so every
    target the model learns has the same layout. Without it, answers are still re-serialized when
    ``json_output`` (``formatos.formato_saida: json``) and they parse, and otherwise kept as written
    (surrounding whitespace removed). An empty answer is always rejected: there is nothing to learn.
    """
    if not raw.strip():
        return Answer(False, reason="empty answer")
    if require_json and is_error_answer(raw):
        first_line = raw.strip().splitlines()[0][:_MAX_REASON_CHARS]
        return Answer(False, reason=f"failed extraction ({first_line!r})")
    if require_json or json_output:
        try:
            value = parse_json_answer(raw)
        except ValueError as exc:
            if require_json:
                return Answer(False, reason=str(exc))
        else:
            return Answer(True, text=json.dumps(value, ensure_ascii=False))
    return Answer(True, text=raw.strip())
