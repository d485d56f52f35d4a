"""Model families for the chat-template tests: each real template with its tokenizer's special tokens.

The templates are the Hub's own: TRL ships byte-identical copies (``trl/chat_templates/*.jinja``). Mistral's
are not shipped offline by TRL: Unsloth's ``mistral_template`` is copied below, and the two ``[INST]``
templates of Mistral-7B-Instruct-v0.3 and Ministral-8B-Instruct-2410 are transcribed from their
tokenizer_config.json (tool-calling branches left out). Each template sits on the tiny test tokenizer
with that family's real special tokens and bos/eos/pad choices (pad == eos where the real model has no
pad token; BOS added by the tokenizer itself where the real one does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"

# Unsloth 2026.10's chat_templates.py, mistral_template (Mistral-7B-Instruct-v0.1 style)
MISTRAL_UNSLOTH = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% if messages[1]['role'] == 'user' %}"
    "{{ '[INST] ' + messages[0]['content'] + ' ' + messages[1]['content'] + ' [/INST]' }}"
    "{% set loop_messages = messages[2:] %}"
    "{% else %}"
    "{{ '[INST] ' + messages[0]['content'] + ' [/INST]' }}"
    "{% set loop_messages = messages[1:] %}"
    "{% endif %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}"
    "{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)


def _mistral_inst(space: str) -> str:
    """Mistral-7B-Instruct-v0.3 (space=" ") / Ministral-8B-Instruct-2410 (space=""): the system message is
    put into the LAST user turn only, and add_generation_prompt adds nothing."""
    open_inst = "[INST]" + space
    answer = '" " + message["content"]|trim + eos_token' if space else 'message["content"] + eos_token'
    return (
        '{%- if messages[0]["role"] == "system" %}'
        '{%- set system_message = messages[0]["content"] %}'
        "{%- set loop_messages = messages[1:] %}"
        "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
        "{%- for message in loop_messages %}"
        '{%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}'
        '{{- raise_exception("After the optional system message, conversation roles must alternate '
        'user/assistant/user/assistant/...") }}'
        "{%- endif %}{%- endfor %}"
        "{{- bos_token }}"
        "{%- for message in loop_messages %}"
        '{%- if message["role"] == "user" %}'
        "{%- if loop.last and system_message is defined %}"
        f'{{{{- "{open_inst}" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}}}'
        f'{{%- else %}}{{{{- "{open_inst}" + message["content"] + "[/INST]" }}}}{{%- endif %}}'
        '{%- elif message["role"] == "assistant" %}'
        f"{{{{- {answer} }}}}"
        "{%- else %}"
        '{{- raise_exception("Only user and assistant roles are supported, with the exception of an '
        'initial optional system message!") }}'
        "{%- endif %}{%- endfor %}"
    )


@dataclass(frozen=True)
class Family:
    """A template and the special tokens of the real tokenizer it ships with."""

    template: str
    eos: str
    end_of_turn: str
    bos: str | None = None
    pad: str | None = None  # None = no pad token: pad falls back to eos (pad == eos)
    tokens: tuple[str, ...] = ()
    adds_bos: bool = False  # the real tokenizer adds BOS itself (a template BOS would then double it)
    plain_tokens: tuple[str, ...] = field(default=())  # added, not special (<think> in Qwen 3)


def trl(name: str) -> str:
    return (TRL_TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


_LLAMA = {"eos": "<|eot_id|>", "end_of_turn": "<|eot_id|>", "bos": "<|begin_of_text|>", "adds_bos": True}
_LLAMA_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>")
_QWEN = {"eos": "<|im_end|>", "end_of_turn": "<|im_end|>", "pad": "<|endoftext|>"}
_DEEPSEEK = {
    "eos": "<｜end▁of▁sentence｜>",
    "end_of_turn": "<｜end▁of▁sentence｜>",
    "bos": "<｜begin▁of▁sentence｜>",
    "pad": "<｜end▁of▁sentence｜>",
    "tokens": ("<｜User｜>", "<｜Assistant｜>"),
    "plain_tokens": ("<think>", "</think>"),
}
_MISTRAL = {
    "eos": "</s>",
    "end_of_turn": "</s>",
    "bos": "<s>",
    "tokens": ("[INST]", "[/INST]"),
    "adds_bos": True,
}

FAMILIES = {
    "gemma3": Family(
        trl("gemma3"),
        eos="<eos>",
        end_of_turn="<end_of_turn>",
        bos="<bos>",
        pad="<pad>",
        tokens=("<start_of_turn>", "<end_of_turn>"),
        adds_bos=True,
    ),
    "llama3.1": Family(trl("llama3_1"), tokens=_LLAMA_TOKENS, **_LLAMA),
    "llama3.2": Family(trl("llama3_2"), tokens=_LLAMA_TOKENS, **_LLAMA),
    "qwen2.5": Family(trl("qwen2_5"), **_QWEN),
    "qwen3-thinking": Family(trl("qwen3"), plain_tokens=("<think>", "</think>"), **_QWEN),
    "qwen3-instruct-2507": Family(trl("qwen3_instruct_2507"), **_QWEN),
    "deepseek-r1-distill-qwen": Family(trl("deepseek_r1_distill"), **_DEEPSEEK),
    "deepseek-r1-distill-llama": Family(trl("deepseek_r1_distill"), adds_bos=True, **_DEEPSEEK),
    "mistral-v0.3": Family(_mistral_inst(" "), **_MISTRAL),
    "ministral-2410": Family(_mistral_inst(""), **_MISTRAL),
    "mistral-unsloth": Family(MISTRAL_UNSLOTH, **_MISTRAL),
    "phi3.5": Family(
        trl("phi3_5"),
        eos="<|endoftext|>",
        end_of_turn="<|end|>",
        bos="<s>",
        pad="<|endoftext|>",
        tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ),
}

ANSWER1 = json.dumps({"nome": "Ana Silva", "cidade": "Recife"}, ensure_ascii=False)
ANSWER2 = json.dumps({"valor": "1.200,00"}, ensure_ascii=False)
SINGLE = [
    {"role": "user", "content": "Extraia nome e cidade.\nTexto: Ana Silva mora em Recife."},
    {"role": "assistant", "content": ANSWER1},
]
MULTI = SINGLE + [
    {"role": "user", "content": "E o valor?\nTexto: pagou R$ 1.200,00."},
    {"role": "assistant", "content": ANSWER2},
]
SYSTEM = [{"role": "system", "content": "Responda só com JSON."}] + SINGLE
CONVERSATIONS = {
    "single": (SINGLE, [ANSWER1]),
    "multi": (MULTI, [ANSWER1, ANSWER2]),
    "system": (SYSTEM, [ANSWER1]),
}


def family_tokenizer(base_dir: Path, fam: Family):
    """The tiny tokenizer with the family's special tokens, bos/eos/pad and chat template."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    specials = [t for t in (fam.bos, fam.eos, fam.pad, *fam.tokens) if t]
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(specials)])
    if fam.plain_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.plain_tokens])
    tok.eos_token = fam.eos
    tok.bos_token = fam.bos
    tok.pad_token = fam.pad
    if fam.adds_bos:
        bos_id = tok.convert_tokens_to_ids(fam.bos)
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)]
        )
    tok.chat_template = fam.template
    return tok
