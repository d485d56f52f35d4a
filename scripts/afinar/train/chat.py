"""Chat templates and response-only loss masks.

The original tool overwrote good templates by guessing from the model's name and then masked with tags
that did not always match the template (bugs B1, B13). Here the tokenizer's own template always wins; a
family template is only installed when the tokenizer has none. The response markers are *derived* by
rendering sentinel messages through the template actually used, so they match it by construction, and
the mask is computed on characters (token offsets), which survives BPE merges across marker
boundaries that defeat token-sequence matching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.chat")

_CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_GEMMA = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
_LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
_DEEPSEEK = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] }}"
    "{%- elif message['role'] == 'user' %}{{- '<｜User｜>' + message['content'] }}"
    "{%- else %}{{- '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"
)

#: Fallback templates by model family; used only for tokenizers that ship no template at all.
FAMILY_TEMPLATES: dict[str, str] = {
    "gemma": _GEMMA,
    "llama-3": _LLAMA3,
    "deepseek": _DEEPSEEK,
    "qwen": _CHATML,
    "chatml": _CHATML,
}

_SENTINEL_USER = ("AFINARUSERONE", "AFINARUSERTWO")
_SENTINEL_ASSISTANT = ("AFINARASSISTANTONE", "AFINARASSISTANTTWO")


def family_of(model_name: str) -> str:
    """Model family from its name or path (``gemma``, ``llama-3``, ``deepseek``, ``qwen`` or ``chatml``)."""
    name = model_name.lower().replace("_", "-")
    if "gemma" in name:
        return "gemma"
    if "deepseek" in name:
        return "deepseek"
    if "llama-3" in name or "llama3" in name:
        return "llama-3"
    if "qwen" in name:
        return "qwen"
    return "chatml"


def ensure_chat_template(tokenizer: Any, model_name: str) -> str:
    """Keep the tokenizer's own chat template; install the family fallback only when it has none.

    Returns where the template came from (``"tokenizer"`` or the family name), for the log and report.
    """
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    family = family_of(model_name)
    tokenizer.chat_template = FAMILY_TEMPLATES[family]
    log.info("tokenizer has no chat template: using the %s fallback", family)
    return family


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` to text with the tokenizer's chat template."""
    return str(
        tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    )


@dataclass(frozen=True)
class ChatMarkers:
    """Text markers of the template actually used (for the log, the summary and ``validate``).

    ``response_prefix`` is what training puts between a user turn and the answer (the assistant header,
    plus whatever the template adds there, such as Qwen 3's empty think block); ``end_of_turn`` closes an
    assistant turn and is trained with the answer, so the model learns to stop; ``instruction_prefix``
    opens a user turn (diagnostics).
    """

    instruction_prefix: str
    response_prefix: str
    end_of_turn: str


def derive_markers(tokenizer: Any) -> ChatMarkers:
    """Find the markers by rendering sentinel messages through the template; refuse a template that
    cannot be masked (no assistant header, contents dropped or reordered, assistant turns not closed)."""
    u1, u2 = _SENTINEL_USER
    a1, a2 = _SENTINEL_ASSISTANT
    try:
        prompt = render(tokenizer, [{"role": "user", "content": u1}])
        one = render(tokenizer, [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}])
        full = render(
            tokenizer,
            [
                {"role": "user", "content": u1},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": u2},
                {"role": "assistant", "content": a2},
            ],
        )
    except Exception as exc:  # templates raise all sorts of jinja errors
        raise AfinarError(
            f"chat template: cannot render a user/assistant conversation ({_first_line(exc)}) — "
            "use a tokenizer whose template accepts user and assistant roles"
        ) from exc
    positions = [full.find(s) for s in (u1, a1, u2, a2)]
    if min(positions) < 0 or positions != sorted(positions) or one.find(u1) < 0 or one.find(a1) < 0:
        raise AfinarError("chat template: it drops or reorders message contents — use another template")
    between = one[one.find(u1) + len(u1) : one.find(a1)]
    user_close = _common_prefix(prompt[prompt.find(u1) + len(u1) :], between)
    response_prefix = between[len(user_close) :] if between[len(user_close) :].strip() else between
    if not response_prefix.strip():
        raise AfinarError(
            "chat template: no detectable assistant marker (nothing separates a user turn from the answer) — "
            "use a chat/instruct tokenizer or set treinamento.train_on_responses_only: false"
        )
    after_a1 = full[positions[1] + len(a1) : positions[2]]
    tail = full[positions[3] + len(a2) :]
    # The end of an assistant turn is what follows its content both mid-conversation and at the end, in
    # whole tokens (Phi-3.5 closes with "<|end|>\n", then "<|user|>" or "<|endoftext|>": not "<|end|>\n<|").
    end_of_turn = _common_token_prefix(tokenizer, after_a1, tail).strip()
    if not end_of_turn:
        raise AfinarError(
            "chat template: it closes assistant turns with nothing, so the model could not learn to stop — "
            "use the model's instruct template or set treinamento.train_on_responses_only: false"
        )
    before_u2 = after_a1[after_a1.find(end_of_turn) + len(end_of_turn) :].lstrip("\n")
    instruction_prefix = before_u2[: before_u2.find(u2)] if u2 in before_u2 else before_u2
    if not instruction_prefix.strip():
        instruction_prefix = prompt[: prompt.find(u1)]
    return ChatMarkers(instruction_prefix, response_prefix, end_of_turn)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _common_token_prefix(tokenizer: Any, a: str, b: str) -> str:
    ids_a = tokenizer(a, add_special_tokens=False)["input_ids"]
    ids_b = tokenizer(b, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
        n += 1
    common = tokenizer.decode(ids_a[:n]) if n else ""
    return common if a.startswith(common) else _common_prefix(a, b)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _content(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _find(text: str, content: str, start: int) -> tuple[int, int]:
    """Where ``content`` sits in ``text`` from ``start``: as is, trimmed (Llama, Gemma, Mistral trim it), or
    its part after ``</think>`` (Qwen 3 and DeepSeek-R1 templates re-render only that). (-1, 0) if absent."""
    candidates = [content, content.strip()]
    if "</think>" in content:
        candidates.append(content.split("</think>")[-1].strip())
    for candidate in candidates:
        if candidate:
            idx = text.find(candidate, start)
            if idx >= 0:
                return idx, len(candidate)
    return -1, 0


def _before_spaces(text: str, idx: int) -> int:
    """Move back over spaces (not newlines) right before an answer: they belong to it. Mistral's
    ``[/INST] `` + answer is tokenized as ``[/INST]`` + ``▁{`` (or a lone space token, by vocabulary),
    so the model is trained to produce the space and its prompt ends at ``[/INST]`` either way."""
    while idx > 0 and text[idx - 1] in " \t":
        idx -= 1
    return idx


def assistant_spans(text: str, messages: list[dict], markers: ChatMarkers) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every assistant answer in the rendered ``text``, each with the
    end-of-turn marker that closes it.

    The answers are located by their own text, in order (each after the user turn before it), not by
    searching for a header: templates differ in what precedes an answer (DeepSeek-R1's generation prompt
    adds ``<think>``, which its rendered turns lack; Qwen 3 adds an empty think block to the last turn
    only; Mistral's adds nothing at all), but every template renders the answer itself.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for n, message in enumerate(messages):
        content = _content(message)
        if message.get("role") != "assistant":
            idx, length = _find(text, content, cursor) if content else (-1, 0)
            if idx >= 0:
                cursor = idx + length
            continue
        idx, length = _find(text, content, cursor)
        if idx < 0:
            raise AfinarError(
                f"chat template: the answer of message {n + 1} is not in the rendered conversation (the template "
                "drops or rewrites it) — fix the data or set treinamento.train_on_responses_only: false"
            )
        end = idx + length
        idx = _before_spaces(text, idx)
        close = text.find(markers.end_of_turn, end)
        if close >= 0 and not text[end:close].strip():
            end = close + len(markers.end_of_turn)
        spans.append((idx, end))
        cursor = end
    return spans


def tokenize_conversation(
    tokenizer: Any,
    messages: list[dict],
    markers: ChatMarkers | None,
) -> dict[str, list[int]]:
    """Tokenize one conversation into ``input_ids`` and ``labels`` (-100 outside assistant turns).

    With ``markers=None`` every token is trainable (full-sequence loss). The rendered text already holds
    the template's BOS where it wants one, so no special tokens are added on top (no double BOS). A token
    is trained when it overlaps an answer span, so a token that merges the space before an answer with
    its first character (SentencePiece's "▁{") is learned, not lost.
    """
    text = render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=markers is not None)
    ids = list(enc["input_ids"])
    if markers is None:
        return {"input_ids": ids, "labels": list(ids)}
    spans = assistant_spans(text, [dict(m) for m in messages], markers)
    labels = [-100] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(start < e and end > s for s, e in spans):
            labels[i] = ids[i]
    return {"input_ids": ids, "labels": labels}


def generation_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text prediction continues from: exactly what training put before an answer.

    The conversation is rendered with a sentinel answer and cut where the first trained token would
    begin. So the model continues from the prefix it was trained on, whatever the template's own
    ``add_generation_prompt`` says: DeepSeek-R1-Distill gets no ``<think>\\n`` (its rendered turns have
    none; the model is fine-tuned to answer directly), Qwen 3 gets its empty think block (the
    non-thinking mode, as its template renders a final answer), Mistral's ``[INST]`` templates, which
    add no generation prompt, get the text up to ``[/INST]``. Templates that cannot render an answer
    after these messages fall back to ``add_generation_prompt``.
    """
    sentinel = _SENTINEL_ASSISTANT[0]
    conversation = [dict(m) for m in messages] + [{"role": "assistant", "content": sentinel}]
    try:
        text = render(tokenizer, conversation)
    except Exception:  # e.g. a template that insists on alternating roles: the usual prompt then
        return render(tokenizer, messages, add_generation_prompt=True)
    at = text.rfind(sentinel)
    if at < 0:
        return render(tokenizer, messages, add_generation_prompt=True)
    at = _before_spaces(text, at)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = next((start for start, end in offsets if end > at and end > start), at)
    return text[: min(cut, at)]


def masked_fraction(labels_rows: list[list[int]]) -> float:
    """Fraction of tokens excluded from the loss (label -100) over all rows."""
    total = sum(len(r) for r in labels_rows)
    masked = sum(1 for r in labels_rows for v in r if v == -100)
    return masked / total if total else 0.0
