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
    """Text markers of the template actually used.

    ``response_prefix`` opens an assistant turn (what ``add_generation_prompt`` appends),
    ``end_of_turn`` closes it (may be empty for templates that close nothing), ``instruction_prefix``
    opens a user turn (for diagnostics and for Unsloth-style helpers).
    """

    instruction_prefix: str
    response_prefix: str
    end_of_turn: str


def derive_markers(tokenizer: Any) -> ChatMarkers:
    """Find the response/instruction markers by rendering sentinel messages through the template."""
    u1, u2 = _SENTINEL_USER
    a1, a2 = _SENTINEL_ASSISTANT
    try:
        prompt = render(tokenizer, [{"role": "user", "content": u1}])
        with_gen = render(tokenizer, [{"role": "user", "content": u1}], add_generation_prompt=True)
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
            f"chat template: cannot render a user/assistant conversation ({exc}) — "
            "use a tokenizer whose template accepts user and assistant roles"
        ) from exc
    response_prefix = with_gen[len(prompt) :] if with_gen.startswith(prompt) else ""
    if not response_prefix.strip():
        raise AfinarError(
            "chat template: no detectable assistant marker (add_generation_prompt adds nothing) — "
            "use a chat/instruct tokenizer or set treinamento.train_on_responses_only: false"
        )
    positions = [full.find(s) for s in (u1, a1, u2, a2)]
    if min(positions) < 0 or positions != sorted(positions):
        raise AfinarError("chat template: it drops or reorders message contents — use another template")
    between_u1_a1 = full[positions[0] + len(u1) : positions[1]]
    if response_prefix not in between_u1_a1:
        raise AfinarError(
            f"chat template: the assistant marker {response_prefix!r} does not precede assistant turns — "
            "set treinamento.train_on_responses_only: false or fix the template"
        )
    after_a1 = full[positions[1] + len(a1) : positions[2]]
    tail = full[positions[3] + len(a2) :]
    # The end of an assistant turn is what follows its content both mid-conversation and at the end.
    end_of_turn = _common_prefix(after_a1, tail).rstrip()
    before_u2 = after_a1[len(end_of_turn) :].lstrip("\n")
    instruction_prefix = before_u2
    if not instruction_prefix.strip():
        instruction_prefix = prompt[: prompt.find(u1)]
    return ChatMarkers(instruction_prefix, response_prefix, end_of_turn)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def assistant_spans(text: str, markers: ChatMarkers) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every assistant turn: its content plus the end-of-turn marker."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        idx = text.find(markers.response_prefix, pos)
        if idx < 0:
            return spans
        start = idx + len(markers.response_prefix)
        end = text.find(markers.end_of_turn, start) if markers.end_of_turn else -1
        if end < 0:
            nxt = text.find(markers.instruction_prefix, start) if markers.instruction_prefix.strip() else -1
            end = nxt if nxt >= 0 else len(text)
        else:
            end += len(markers.end_of_turn)
        spans.append((start, end))
        pos = end


def tokenize_conversation(
    tokenizer: Any,
    messages: list[dict],
    markers: ChatMarkers | None,
) -> dict[str, list[int]]:
    """Tokenize one conversation into ``input_ids`` and ``labels`` (-100 outside assistant turns).

    With ``markers=None`` every token is trainable (full-sequence loss). The rendered text already holds
    the template's BOS where it wants one, so no special tokens are added on top.
    """
    text = render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=markers is not None)
    ids = list(enc["input_ids"])
    if markers is None:
        return {"input_ids": ids, "labels": list(ids)}
    spans = assistant_spans(text, markers)
    labels = [-100] * len(ids)
    for i, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[i] = ids[i]
    return {"input_ids": ids, "labels": labels}


def masked_fraction(labels_rows: list[list[int]]) -> float:
    """Fraction of tokens excluded from the loss (label -100) over all rows."""
    total = sum(len(r) for r in labels_rows)
    masked = sum(1 for r in labels_rows for v in r if v == -100)
    return masked / total if total else 0.0
