"""Whether a GPU has room to train without gradient checkpointing, and the log line that says so.

Gradient checkpointing (``treinamento.gradient_checkpointing: true``, the default) keeps one tensor per
layer and recomputes each layer's forward in the backward pass: LoRA's 4·N FLOPs per token become 6·N. On a
card with room for every layer's activations, turning it off is the largest single speed-up measured for big
models (an 8B model at 8,192 tokens a step on an H200: 2.3x the whole epoch, 58 GB reserved instead of 18;
docs/benchmarks.md). It stays the default because it is what lets one config run on a small card too, and an
out-of-memory error late in a run costs more than the speed; so the train rule only *says* when the card it
runs on has room, with the estimate below.

The estimate is an upper bound of what one step keeps for the backward pass without checkpointing, for a
transformer decoder in 16-bit activations: per layer and token about eight hidden-width tensors (norms'
inputs and outputs, q/k/v/o inputs, the attention output, the residuals) and four intermediate-width ones
(the MLP's gate, up, their product, the down projection's input), 2 bytes each. The 8B run above kept about
60 % of that (27 GB allocated for 47 GB estimated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: free memory must exceed the estimate by this factor (allocator fragmentation, logits, optimizer state)
MARGIN = 1.25
GB = 1024**3


def activation_bytes(layers: int, hidden: int, intermediate: int, tokens: int) -> int:
    """Upper bound of the activations one step of ``tokens`` (padded) tokens keeps without checkpointing."""
    return layers * tokens * (8 * hidden + 4 * intermediate) * 2


def model_shape(config: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(layers, hidden, intermediate) from a config.json (``text_config`` of multimodal models), or None."""
    config = config.get("text_config") or config
    try:
        layers = int(config["num_hidden_layers"])
        hidden = int(config["hidden_size"])
        intermediate = int(config.get("intermediate_size") or 4 * hidden)
    except (KeyError, TypeError, ValueError):
        return None
    return layers, hidden, intermediate


def largest_step_tokens(
    lengths: Sequence[int], batch_size: int, max_seq_length: int, token_budget: int | None
) -> int:
    """Padded tokens of the largest micro-batch: the token budget, or ``batch_size`` of the longest rows."""
    if token_budget:
        return int(token_budget)
    longest = min(max(lengths, default=max_seq_length), max_seq_length)
    return batch_size * longest


def checkpointing_hint(config: Mapping[str, Any], step_tokens: int, free_bytes: int) -> str | None:
    """The log line when the activations of the largest step fit in ``free_bytes`` with margin, else None."""
    shape = model_shape(config)
    if shape is None or step_tokens <= 0:
        return None
    need = activation_bytes(*shape, step_tokens)
    if need * MARGIN > free_bytes:
        return None
    return (
        f"this GPU has room to train without gradient checkpointing: the largest step ({step_tokens} tokens) "
        f"would keep at most {need / GB:.1f} GB of activations and {free_bytes / GB:.1f} GB are free; "
        "treinamento.gradient_checkpointing: false skips recomputing each layer's forward "
        "(an 8B model on an H200 trained 2.3x faster; docs/training.md)"
    )
