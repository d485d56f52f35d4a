"""The tiny offline model the demo and the tests train: no network, no download, seconds to build.

A byte-level BPE tokenizer is trained on the example corpus with Qwen2's exact pre-tokenizer rules,
because transformers 5 loads any folder whose ``model_type`` is qwen2 with ``Qwen2Tokenizer``, which
rebuilds the pre-tokenizer itself: trained with other rules, the same text would get other ids after a
reload. The chat template is ChatML with ``{% generation %}`` around the assistant turn (TRL's
``assistant_only_loss`` needs it) and the weights are random, initialised with a wide range (0.1),
which a two-layer model learns from far better than with the default 0.02.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.io import atomic_dir

log = logging.getLogger("afinar.train.demo_model")

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# ChatML; the assistant turn (content + end-of-turn token) is wrapped in {% generation %} so that
# ``return_assistant_tokens_mask`` and TRL's ``assistant_only_loss`` know what the model must learn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny Qwen2 model: small enough to train for a minute on two CPU cores."""

    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    initializer_range: float = 0.1


def read_corpus(paths: Iterable[str | Path]) -> list[str]:
    """Read text files (UTF-8, Latin-1 as a fallback) for tokenizer training; folders are walked for *.txt."""
    texts: list[str] = []
    for raw in paths:
        path = Path(raw)
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                raise AfinarError(f"{file}: corpus file not found — check the demo_model rule's inputs")
            data = file.read_bytes()
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(data.decode("latin-1"))
    return texts


def demo_texts(texts: list[str]) -> list[str]:
    """The corpus plus the chat roles, so that the template's scaffolding gets whole tokens too."""
    return list(texts) + ["user\nassistant\nsystem\n"] * 10


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Train a byte-level BPE with Qwen2's pre-tokenizer and return a ``Qwen2Tokenizer`` with ChatML."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Qwen2Tokenizer rebuilds its pre-tokenizer from this pattern on every load; train with the same one.
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if not any(t.strip() for t in texts):
        raise AfinarError("demo corpus: no text to train the tokenizer on — check resources/example/")
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = TinyModelSpec.max_position_embeddings
    return tok


def build_tiny_model(
    out_dir: str | Path,
    texts: list[str],
    vocab_size: int = 2048,
    seed: int = 0,
    spec: TinyModelSpec | None = None,
) -> Path:
    """Build tokenizer + random Qwen2 model from ``texts`` and save both (safetensors) into ``out_dir``.

    The folder is written under a temporary name and renamed at the end, so an interrupted build never
    leaves a folder that looks like a model. Same texts and seed → byte-identical weights.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec(vocab_size=vocab_size)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %s parameters, vocabulary %s, saved to %s", f"{n_params:,}", len(tok), out)
    return out


@dataclass(frozen=True)
class LlamaSpec:
    """Shape of a Llama-architecture model built locally (GPU tests, benchmarks); default ≈ 1.1B parameters."""

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02


def build_llama_model(
    out_dir: str | Path, texts: list[str], spec: LlamaSpec | None = None, seed: int = 0
) -> Path:
    """A random Llama-shaped model (bf16 safetensors) with the ChatML tokenizer trained on ``texts``.

    The embedding matrix has ``spec.vocab_size`` rows (a realistic LM-head cost) even though the
    tokenizer uses fewer ids. For GPU tests and benchmarks, where no model may be downloaded.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or LlamaSpec()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, min(spec.vocab_size, 8192))
    config = LlamaConfig(
        vocab_size=max(spec.vocab_size, len(tok)),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
    )
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    log.info(
        "llama model: %s parameters, saved to %s", f"{sum(p.numel() for p in model.parameters()):,}", out
    )
    return out
