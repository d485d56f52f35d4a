"""Token-length filter (``treinamento.filtro_tokens``): which records fit the model, counted for real.

Lengths are counted with the experiment's own tokenizer and chat template (the text training sees), so
"too long" means what it means for this model, not a character estimate. A record longer than the limit
(``max_tokens``, default ``max_seq_length``) is dropped and reported (``acao: descartar``, the default),
or gets the end of its last user message cut until the conversation fits (``acao: truncar``). The
answer is never cut: a truncated answer teaches the model to stop mid-sentence. When the answer alone
does not fit, the record is dropped even with ``truncar``.

The ``filter_tokens`` rule writes the decision per experiment (``results/data/filtro_tokens/{exp}.json``);
training applies it to treino and validacao. The test split is never filtered: every test record is
predicted (prediction cuts over-long prompts itself and flags them ``truncado``), so experiments with
different tokenizers are still evaluated on the same records; its counts are reported for information.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.io import atomic_write_json
from afinar.train import chat, models

log = logging.getLogger("afinar.train.token_filter")

KEY = "treinamento.filtro_tokens"
ACTIONS = ("descartar", "truncar")
#: splits the filter is applied to; teste is only measured (see the module docstring)
APPLIED_TO = ("treino", "validacao")
_MAX_TRIES = 4  # decoding and re-encoding a cut prompt can shift a few tokens: retry a few times


def effective_limit(filtro: dict | None, max_seq_length: int) -> int:
    """``max_tokens``, or ``max_seq_length`` when it is null (the config check keeps it at or below that)."""
    filtro = filtro or {}
    return min(int(filtro.get("max_tokens") or max_seq_length), int(max_seq_length))


def action(filtro: dict | None) -> str:
    value = str((filtro or {}).get("acao") or "descartar")
    if value not in ACTIONS:
        raise AfinarError(f"{KEY}.acao: {value!r} is not one of {', '.join(ACTIONS)}")
    return value


#: characters per token assumed for the first window of a long text (doubled while the window holds fewer
#: tokens than the limit): tokenizing a 50 MB record whole took 8.7 GB and 106 s to learn it was too long
_CHARS_PER_TOKEN = 8


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _window(limit: int) -> int:
    return (limit + 2) * _CHARS_PER_TOKEN


def _head_over_limit(tokenizer: Any, text: str, limit: int) -> tuple[str, int | None]:
    """(the shortest prefix tried that holds more than ``limit`` + 1 tokens, its count), or (text, None).

    A prefix can lose at most one token at the cut, so such a prefix proves the whole text is longer than
    ``limit``. The work is bounded by the limit, not by the text: a huge record costs what a long one does.
    """
    window = _window(limit)
    while len(text) > window:
        n = _count(tokenizer, text[:window])
        if n > limit + 1:
            return text[:window], n
        window *= 2
    return text, None


def bounded_length(tokenizer: Any, text: str, limit: int) -> int:
    """Tokens of ``text``: exact when within ``limit``; otherwise some count above ``limit``."""
    _, over = _head_over_limit(tokenizer, text, limit)
    return over if over is not None else _count(tokenizer, text)


def conversation_length(tokenizer: Any, messages: list[dict], limit: int | None = None) -> int:
    """Tokens of the conversation rendered with the chat template (what training feeds the model).

    With ``limit``, only as much is tokenized as decides whether it fits (see :func:`bounded_length`)."""
    text = chat.render(tokenizer, messages)
    return _count(tokenizer, text) if limit is None else bounded_length(tokenizer, text, limit)


def shorten_prompt(tokenizer: Any, messages: list[dict], overflow: int) -> list[dict] | None:
    """Cut ``overflow`` (+2 for merges at the cut) tokens off the end of the last user message.

    None when that message is not long enough to absorb the cut (the answer alone does not fit).
    """
    idx = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if idx is None:
        return None
    ids = tokenizer(messages[idx]["content"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - overflow - 2
    if keep <= 0:
        return None
    out = [dict(m) for m in messages]
    out[idx]["content"] = tokenizer.decode(ids[:keep])
    return out


def _precut_prompt(tokenizer: Any, messages: list[dict], limit: int) -> list[dict]:
    """Cut a huge last user message to a prefix that still holds more than ``limit`` tokens: whatever
    truncation keeps lies within it, and the rest never has to be tokenized."""
    idx = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if idx is None:
        return messages
    head, over = _head_over_limit(tokenizer, messages[idx]["content"], limit)
    if over is None:
        return messages
    out = [dict(m) for m in messages]
    out[idx]["content"] = head
    return out


def fit_conversation(
    tokenizer: Any, messages: list[dict], limit: int, acao: str, length: int | None = None
) -> tuple[list[dict] | None, str]:
    """(messages that fit, ``mantido``|``truncado``) or (None, ``descartado``)."""
    length = conversation_length(tokenizer, messages, limit) if length is None else length
    if length <= limit:
        return messages, "mantido"
    if acao != "truncar":
        return None, "descartado"
    messages = _precut_prompt(tokenizer, messages, limit)
    length = conversation_length(tokenizer, messages, limit)
    for _ in range(_MAX_TRIES):
        shorter = shorten_prompt(tokenizer, messages, length - limit)
        if shorter is None:
            return None, "descartado"
        messages, length = shorter, conversation_length(tokenizer, shorter, limit)
        if length <= limit:
            return messages, "truncado"
    return None, "descartado"


@dataclass
class SplitDecision:
    """What the filter did to one split: the ids dropped and the ids whose prompt was shortened."""

    total: int = 0
    descartados: list[str] = field(default_factory=list)
    truncados: list[str] = field(default_factory=list)

    @property
    def mantidos(self) -> int:
        return self.total - len(self.descartados)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "mantidos": self.mantidos,
            "descartados": list(self.descartados),
            "truncados": list(self.truncados),
        }


def decide_split(
    tokenizer: Any, ids: Sequence[str], rows: Sequence[list[dict]], limit: int, acao: str, batch: int = 512
) -> SplitDecision:
    """Measure every record of a split (batched tokenization) and decide which are dropped or truncated."""
    decision = SplitDecision(total=len(ids))
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        texts = [chat.render(tokenizer, msgs) for msgs in chunk]
        short = [i for i, text in enumerate(texts) if len(text) <= _window(limit)]
        counted = tokenizer([texts[i] for i in short], add_special_tokens=False)["input_ids"] if short else []
        lengths = [0] * len(texts)
        for i, ids_ in zip(short, counted, strict=True):
            lengths[i] = len(ids_)
        for i in set(range(len(texts))) - set(short):  # long texts: only what decides the length
            lengths[i] = bounded_length(tokenizer, texts[i], limit)
        del texts, counted
        for rid, msgs, n in zip(ids[start : start + batch], chunk, lengths, strict=True):
            if n <= limit:
                continue
            _, status = fit_conversation(tokenizer, msgs, limit, acao, length=n)
            (decision.truncados if status == "truncado" else decision.descartados).append(rid)
    return decision


def read_split_records(path: str | Path) -> tuple[list[str], list[list[dict]]]:
    """Ids and messages of a split parquet (the contract's ``id`` + ``messages``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise AfinarError(f"{path}: split file not found — run the split rule first")
    frame = pd.read_parquet(path)
    if "messages" not in frame.columns or "id" not in frame.columns:
        raise AfinarError(f"{path}: no 'id'/'messages' columns — the split rule writes them; rerun it")
    rows = [
        [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs] for msgs in frame["messages"]
    ]
    return [str(i) for i in frame["id"]], rows


def check_model_context(limit: int, base: str, source: str) -> None:
    """The limit must not exceed the model's context (``max_position_embeddings``)."""
    context = models.model_max_length(models.read_model_config(source))
    if context is not None and limit > context:
        raise AfinarError(
            f"{KEY}.max_tokens: {limit} is above the context of {base} (max_position_embeddings {context}) — "
            f"set filtro_tokens.max_tokens and max_seq_length to {context} or less"
        )


def run_filter(
    splits: dict[str, str | Path],
    output: str | Path,
    base: str,
    max_seq_length: int,
    filtro: dict | None,
) -> dict[str, Any]:
    """The ``filter_tokens`` rule: measure every split, write and return the decision report."""
    limit, acao = effective_limit(filtro, max_seq_length), action(filtro)
    source = models.resolve_model_source(str(base))
    check_model_context(limit, str(base), source)
    tokenizer = models.load_tokenizer(source)
    chat.ensure_chat_template(tokenizer, str(base))
    report: dict[str, Any] = {
        "max_tokens": limit,
        "max_tokens_config": (filtro or {}).get("max_tokens"),
        "max_seq_length": int(max_seq_length),
        "acao": acao,
        "modelo": str(base),
        "aplicado_em": list(APPLIED_TO),
        "splits": {},
    }
    for name, path in splits.items():
        ids, rows = read_split_records(path)
        decision = decide_split(tokenizer, ids, rows, limit, acao)
        report["splits"][name] = decision.as_dict()
        level = logging.WARNING if decision.descartados and name in APPLIED_TO else logging.INFO
        log.log(
            level,
            "%s: %d of %d records longer than %d tokens dropped%s, %d with a shortened prompt",
            name,
            len(decision.descartados),
            decision.total,
            limit,
            "" if name in APPLIED_TO else " from training only (every test record is still predicted)",
            len(decision.truncados),
        )
    atomic_write_json(output, report)
    return report


def read_report(path: str | Path, limit: int, acao: str) -> dict[str, Any]:
    """The rule's report, checked against the settings training runs with (a stale file is an error)."""
    import json

    try:
        report: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AfinarError(f"{path}: unreadable token filter report ({exc}) — rerun filter_tokens") from None
    if report.get("max_tokens") != limit or report.get("acao") != acao:
        raise AfinarError(
            f"{path}: made for max_tokens {report.get('max_tokens')} / acao {report.get('acao')}, but training "
            f"uses {limit} / {acao} — rerun filter_tokens (delete the file)"
        )
    return report


def apply_decision(
    tokenizer: Any,
    ids: Sequence[str],
    rows: Sequence[list[dict]],
    decision: dict[str, Any],
    limit: int,
    acao: str,
    where: str,
) -> list[list[dict]]:
    """The rows training keeps: ``descartados`` left out, ``truncados`` shortened the same way as measured."""
    dropped, truncated = set(decision.get("descartados") or []), set(decision.get("truncados") or [])
    if int(decision.get("total", -1)) != len(ids):
        raise AfinarError(
            f"{where}: the token filter report counts {decision.get('total')} records, the split has {len(ids)} "
            "— rerun filter_tokens"
        )
    kept: list[list[dict]] = []
    for rid, msgs in zip(ids, rows, strict=True):
        if rid in dropped:
            continue
        if rid in truncated:
            fitted, _status = fit_conversation(tokenizer, msgs, limit, acao)
            if fitted is None:
                raise AfinarError(
                    f"{where}: record {rid!r} no longer fits after truncation — rerun filter_tokens"
                )
            msgs = fitted
        kept.append(msgs)
    if dropped or truncated:
        log.info(
            "%s: token filter applied: %d dropped, %d with a shortened prompt, %d kept",
            where,
            len(dropped),
            len(truncated),
            len(kept),
        )
    return kept
