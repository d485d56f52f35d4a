"""How many prompts go into one batch (``predicao.batch_size: auto``), and progress lines for the log.

Why a token budget and not a fixed count: the memory one prompt needs grows with its length (its KV
cache, the prefill's activations), so a count that is safe for the longest prompts wastes most of the
GPU on short ones, and a count tuned on short ones runs out of memory on long ones. ``auto`` sizes each
batch from the free GPU memory and the batch's (bucketed) prompt length plus ``max_new_tokens``; an
out-of-memory error halves the batch and retries it (afinar.predict.generation), so an estimate that
is too optimistic costs one retry, never the predictions already made.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("afinar.predict.batching")

#: the most prompts decoded together: beyond this the decode step stops getting cheaper per token on
#: a 1B model (the KV-cache reads grow with the batch while the weight reads stay fixed)
MAX_BATCH = 256
#: on a CPU ``auto`` means this many (the ``generate`` path; the old default)
CPU_BATCH = 16
#: share of the free GPU memory the batches may plan to use (the rest: allocator slack, fragmentation)
MEMORY_SHARE = 0.7


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per token the estimate uses, read from the model's config."""

    kv_per_token: int  # KV cache, all layers
    prefill_per_token: int  # transient activations of a prompt token during the prefill
    attention_per_cache_token: int  # the prefill's per-layer copy of keys/values per query head

    @classmethod
    def of(cls, model: Any) -> MemoryModel:
        cfg = model.config.get_text_config(decoder=True)
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
        width = 2  # bf16/fp16 activations (fp32 on CPU is never sized from GPU memory)
        return cls(
            kv_per_token=2 * cfg.num_hidden_layers * kv_heads * head_dim * width,
            prefill_per_token=width * (8 * cfg.hidden_size + 3 * inter),
            attention_per_cache_token=2 * heads * head_dim * width,
        )

    def batch_bytes(self, batch: int, prompt_len: int, cache_len: int) -> int:
        """Peak bytes of one batch: its cache plus the prefill's transients (mask included)."""
        per_row = (
            cache_len * (self.kv_per_token + self.attention_per_cache_token)
            + prompt_len * self.prefill_per_token
            + prompt_len * cache_len * 3  # the boolean prefill mask and its additive copy
        )
        return batch * per_row


def free_gpu_bytes() -> int:
    """Free device memory plus what PyTorch's allocator holds unused (it reuses that first)."""
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def auto_batch_size(
    memory: MemoryModel, budget: int, prompt_len: int, cache_len: int, cap: int = MAX_BATCH
) -> int:
    """Largest batch (at most ``cap``) whose estimate fits ``budget`` bytes; at least 1."""
    one = memory.batch_bytes(1, prompt_len, cache_len)
    return max(1, min(cap, budget // max(one, 1)))


class ProgressLog:
    """Log lines "N/M records, tokens/s, ETA" at most every ``interval_s`` (and a last one at the end).

    A log file, not a terminal bar: a prediction of ten thousand records runs for minutes in a SLURM job
    whose only window is its log.
    """

    def __init__(self, desc: str, total: int, interval_s: float = 15.0) -> None:
        self.desc = desc
        self.total = total
        self.interval_s = interval_s
        self.records = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self._last = self.started

    def update(self, records: int, tokens: int) -> None:
        self.records += records
        self.tokens += tokens
        now = time.perf_counter()
        if now - self._last >= self.interval_s and self.records < self.total:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.records / elapsed
        eta = (self.total - self.records) / rate if rate > 0 else math.nan
        return (
            f"{self.desc}: {self.records}/{self.total} records ({self.records / max(self.total, 1):.0%}), "
            f"{self.tokens / elapsed:,.0f} tokens/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}"
        )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
