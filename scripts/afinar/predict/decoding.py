"""Greedy/sampled decoding with a static KV cache, the decode step captured once as a CUDA graph.

Why not ``model.generate``: at batch 256 on an H200 a ``generate`` step of a 1B model takes ~90 ms where
its memory traffic needs ~2 ms — the time goes to Python and kernel launches, not the GPU. Here:

- the KV cache is a transformers ``StaticCache`` sized for one (batch, prompt bucket + answer) shape, so
  every decode step has the same shapes and tensor addresses;
- one decode step (model forward, greedy argmax or seeded sampling, stop check, bookkeeping) is
  captured once per shape as a ``torch.cuda.CUDAGraph`` and replayed: ~300 kernel launches become one;
- the host looks at the GPU only every ``SYNC_EVERY`` steps (are all rows finished?), never per token;
- the decode attention reads each key/value head once (the query heads of a group become the query
  "length" of one SDPA call) instead of repeating the cache per query head, as ``repeat_kv`` does;
- prompts are left-padded to a multiple of ``LENGTH_BUCKET`` tokens, so a long test split needs only a
  handful of shapes (one capture each, a few milliseconds) rather than one per batch.

The prefill (the prompt's forward pass) runs eagerly through the model's own SDPA attention: it is one
large call per batch and already GPU-bound. On a CPU there is nothing to capture and the same step runs
eagerly (the unit tests compare it token for token with ``generate``); the predict rule keeps
``generate`` on CPUs (afinar.predict.generation decides).

Models whose attention is not plain causal full attention (sliding-window layers, soft-capping) are
refused with ``Unsupported`` and predicted with ``generate`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("afinar.predict.decoding")

#: prompts are left-padded to a multiple of this many tokens (fewer distinct shapes, fewer captures)
LENGTH_BUCKET = 64
#: the host checks "are all rows finished?" every this many decode steps (one sync each)
SYNC_EVERY = 16
#: the attention implementation name registered with transformers while decoding
ATTENTION_NAME = "afinar_static_decode"


class Unsupported(Exception):
    """This model cannot be decoded here (the caller falls back to ``generate``)."""


@dataclass(frozen=True)
class Sampling:
    """Decoding rule: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0


def bucket_length(n: int, multiple: int = LENGTH_BUCKET) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-n // multiple) * multiple)


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token takes over all layers (keys + values)."""
    cfg = model.config.get_text_config(decoder=True)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dtype_bytes = next(model.parameters()).element_size()
    return int(2 * cfg.num_hidden_layers * kv_heads * head_dim * max(dtype_bytes, 2))


def _decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention for the static decoder: SDPA as usual for the prefill; for one new token, one SDPA call
    per key/value head with that group's query heads as the query "length" (each cached key/value is
    read once, not once per query head)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise Unsupported("sliding-window or soft-capped attention")
    if query.shape[2] != 1:
        result: tuple[Any, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return result
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, _decode_attention)


class _Shape:
    """Everything that lives for one (batch, prompt bucket) shape: the cache, the step's static inputs
    and outputs, and (on CUDA) the captured decode step."""

    def __init__(self, decoder: StaticDecoder, batch: int, prompt_len: int) -> None:
        import torch
        from transformers import StaticCache

        self.batch = batch
        self.prompt_len = prompt_len
        self.cache_len = prompt_len + decoder.max_new_tokens
        device = decoder.device
        self.cache: Any = StaticCache(config=decoder.model.config, max_cache_len=self.cache_len)
        if any(getattr(layer, "is_sliding", False) for layer in self.cache.layers):
            raise Unsupported("sliding-window cache layers")
        long = {"dtype": torch.long, "device": device}
        self.key_index = torch.arange(self.cache_len, **long)
        self.start = torch.zeros(batch, **long)  # first real token's cache slot per row (left padding)
        self.cur = torch.zeros(batch, 1, **long)  # the token fed to the next step
        self.pos = torch.zeros(batch, 1, **long)  # its position id
        self.step = torch.zeros(1, **long)  # its index in `tokens`
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(batch, decoder.max_new_tokens, **long)
        self.graph: Any = None

    def slot(self) -> Any:
        """The cache slot the next step writes (a device tensor the cache itself advances)."""
        return self.cache.layers[0].cumulative_length

    def rewind(self, value: int = 0) -> None:
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.fill_(value)


class StaticDecoder:
    """Decode batches of token-id prompts; one instance per model and ``max_new_tokens``.

    ``generate(prompts)`` returns, per prompt, the new token ids (up to and including the first stop
    token, as ``generate`` does, then pad ids up to the longest row) in the given order.
    """

    name = "static"

    def __init__(
        self,
        model: Any,
        pad_id: int,
        stop_ids: Sequence[int],
        max_new_tokens: int,
        sampling: Sampling | None = None,
        use_graphs: bool | None = None,
        attention: str = ATTENTION_NAME,
        measure: bool = False,
    ) -> None:
        import torch

        self.model = model
        self.pad_id = int(pad_id)
        self.max_new_tokens = int(max_new_tokens)
        self.sampling = sampling or Sampling()
        self.device = next(model.parameters()).device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.stop = torch.tensor(sorted({int(s) for s in stop_ids}) or [-1], device=self.device)
        self._shape: _Shape | None = None
        self.captures = 0  # how many decode graphs were captured (for logs and the benchmark)
        self.attention = attention  # "sdpa" = transformers' own (repeat_kv) in the decode step too
        self.measure = measure  # time prefill / capture / decode (synchronizes: benchmarks only)
        self.timings = {"prefill_s": 0.0, "capture_s": 0.0, "decode_s": 0.0}
        _register_attention()

    # ------------------------------------------------------------------------------------- public

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """New tokens for each prompt (one batch: the caller sizes it)."""
        import torch

        if not prompts:
            return []
        prompt_len = bucket_length(max(len(p) for p in prompts))
        shape = self._shape_for(len(prompts), prompt_len)
        with torch.inference_mode(), self._attention():
            steps = self._run(shape, prompts)
            rows: list[list[int]] = shape.tokens[:, :steps].tolist()
        return rows

    def release(self) -> None:
        """Free the cache and the captured graph (e.g. after an out-of-memory error)."""
        self._shape = None

    # ------------------------------------------------------------------------------------ private

    def _attention(self) -> Any:
        """Switch the model to the static decoder's attention for the duration of a batch."""
        from contextlib import contextmanager

        @contextmanager
        def switched() -> Iterator[None]:
            config = self.model.config
            before = config._attn_implementation
            config._attn_implementation = self.attention
            try:
                yield
            finally:
                config._attn_implementation = before

        return switched()

    def _shape_for(self, batch: int, prompt_len: int) -> _Shape:
        current = self._shape
        if current is not None and (current.batch, current.prompt_len) == (batch, prompt_len):
            return current
        self._shape = None  # free the old cache and graph before allocating the new ones
        self._shape = _Shape(self, batch, prompt_len)
        return self._shape

    def _choose(self, logits: Any) -> Any:
        """Next token per row from float32 logits: argmax, or a seeded sample (Gumbel-max over the
        temperature-scaled, top-p-filtered logits), all on the device."""
        import torch

        if self.sampling.temperature <= 0:
            return logits.argmax(dim=-1)
        logits = logits / self.sampling.temperature
        if self.sampling.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self.sampling.top_p  # always keeps the top token
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        noise = torch.rand_like(logits).clamp_(min=1e-20)
        return (logits - torch.log(-torch.log(noise))).argmax(dim=-1)

    def _prefill(self, shape: _Shape, prompts: Sequence[Sequence[int]]) -> None:
        """Run the prompts (left-padded to the bucket) through the model; choose the first new token."""
        import torch

        batch, length = shape.batch, shape.prompt_len
        ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        starts = torch.empty(batch, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            starts[row] = length - len(prompt)
            ids[row, length - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        ids = ids.to(self.device, non_blocking=True)
        shape.start.copy_(starts)
        query = torch.arange(length, device=self.device)
        keys = shape.key_index
        # causal, padding keys hidden; a padding query sees only itself (a row with no key gives NaN)
        allowed = (keys[None, None, :] <= query[None, :, None]) & (
            (keys[None, None, :] >= shape.start[:, None, None])
            | (keys[None, None, :] == query[None, :, None])
        )
        positions = (query[None, :] - shape.start[:, None]).clamp_(min=0)
        shape.rewind(0)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=allowed[:, None],
            past_key_values=shape.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = self._choose(out.logits[:, -1, :].float())
        shape.tokens.fill_(self.pad_id)
        shape.tokens[:, 0] = first
        shape.done.copy_((first[:, None] == self.stop[None, :]).any(dim=-1))
        shape.cur.copy_(first[:, None])
        shape.pos.copy_((length - shape.start)[:, None])
        shape.step.fill_(1)

    def _decode_step(self, shape: _Shape) -> None:
        """One new token for every row; only tensor operations, so it can be captured and replayed."""
        import torch

        slot = shape.slot()
        visible = (shape.key_index[None, :] >= shape.start[:, None]) & (shape.key_index[None, :] <= slot)
        out = self.model(
            input_ids=shape.cur,
            position_ids=shape.pos,
            attention_mask=visible[:, None, None, :],
            past_key_values=shape.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        nxt = self._choose(out.logits[:, -1, :].float())
        nxt = torch.where(shape.done, torch.full_like(nxt, self.pad_id), nxt)
        shape.tokens.index_copy_(1, shape.step, nxt[:, None])
        shape.done |= (nxt[:, None] == self.stop[None, :]).any(dim=-1)
        shape.cur.copy_(nxt[:, None])
        shape.pos.add_(1)
        shape.step.add_(1)

    def _capture(self, shape: _Shape) -> None:
        """Capture the decode step (after a prefill: the cache must exist); the state it advanced
        while warming up is put back."""
        import torch

        saved = [t.clone() for t in (shape.cur, shape.pos, shape.step, shape.done, shape.tokens)]
        slot = int(shape.slot().item())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: lazy allocations and library handles happen outside the capture
                self._decode_step(shape)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._decode_step(shape)
        for target, value in zip(
            (shape.cur, shape.pos, shape.step, shape.done, shape.tokens), saved, strict=True
        ):
            target.copy_(value)
        shape.rewind(slot)
        shape.graph = graph
        self.captures += 1
        log.debug("captured the decode step for batch %d, cache %d", shape.batch, shape.cache_len)

    def _run(self, shape: _Shape, prompts: Sequence[Sequence[int]]) -> int:
        """Prefill, then decode until every row stopped or ``max_new_tokens``; returns the steps made."""
        clock = self._clock()
        self._prefill(shape, prompts)
        clock("prefill_s")
        if self.use_graphs and shape.graph is None:
            self._capture(shape)
            clock("capture_s")
        steps = 1
        while steps < self.max_new_tokens:
            if steps % SYNC_EVERY == 0 and bool(shape.done.all()):
                break
            if shape.graph is not None:
                shape.graph.replay()
            else:
                self._decode_step(shape)
            steps += 1
        clock("decode_s")
        return steps

    def _clock(self) -> Any:
        """A function that adds the time since its last call to ``timings[name]`` (when measuring)."""
        import time

        import torch

        last = [time.perf_counter()]

        def lap(name: str) -> None:
            if not self.measure:
                return
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.timings[name] += now - last[0]
            last[0] = now

        return lap
