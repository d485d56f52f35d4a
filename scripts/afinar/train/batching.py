"""How training batches are composed: length-grouped batches in an unbiased order, or batches by token budget.

Why a sampler of our own instead of transformers' ``group_by_length``: transformers sorts each group of
about 50 batches by *descending* length and leaves the batches in that order, so the steps of an epoch go
from long to short, group after group. A measurement window (or an early-stopped run) then sees more
tokens per step than the data holds, and the order is not random as the docs promised. Here records are
still grouped by length (little padding), but the batches of the whole epoch are then shuffled, so the
length of the batch at any step is drawn from the whole epoch (only the costliest batch is moved to step 1,
so that an out-of-memory error appears at once rather than after an hour).

``treinamento.tokens_por_lote: N`` fills each micro-batch with as many similar-length records as fit in N
tokens counted with padding (rows x widest row, rounded as the collator rounds): short records make
larger batches, long ones smaller, and a step's cost stays about the same. On a GPU a 1B model's step is
launch-bound, so more tokens per step cost little more time (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

from afinar.config.checks import token_budget_problem
from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.batching")

#: records of one length group = this many batches (transformers' group_by_length uses the same 50)
GROUP_BATCHES = 50


def padded_width(length: int, multiple: int) -> int:
    """Width of a padded row holding ``length`` tokens when widths are rounded up to ``multiple``."""
    multiple = max(1, multiple)
    return -(-length // multiple) * multiple


def plan_batches(
    lengths: Sequence[int],
    rows: int,
    seed: int,
    epoch: int = 0,
    token_budget: int | None = None,
    pad_multiple: int = 1,
) -> list[list[int]]:
    """The micro-batches of one epoch, in training order (deterministic for a seed and epoch).

    1. the records are shuffled and cut into groups of about ``GROUP_BATCHES`` batches' worth;
    2. each group is sorted by length and cut into batches: ``rows`` records each, or, with
       ``token_budget``, as many as fit in that many padded tokens (at least one record per batch);
    3. the batches of the whole epoch are shuffled, and the costliest one is moved to the front.
    """
    rng = random.Random(int(seed) * 1_000_003 + int(epoch))
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if token_budget:
        mean = max(1.0, sum(lengths) / max(1, len(lengths)))
        group_size = max(1, round(GROUP_BATCHES * token_budget / mean))
    else:
        group_size = GROUP_BATCHES * max(1, rows)
    batches: list[list[int]] = []
    for start in range(0, len(order), group_size):
        group = sorted(order[start : start + group_size], key=lambda i: lengths[i], reverse=True)
        if not token_budget:
            batches.extend(group[i : i + rows] for i in range(0, len(group), rows))
            continue
        batch: list[int] = []
        width = 0
        for i in group:  # longest first: a batch's width is set by its first record
            if batch and (len(batch) + 1) * width > token_budget:
                batches.append(batch)
                batch = []
            if not batch:
                width = padded_width(lengths[i], pad_multiple)
            batch.append(i)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    if batches:
        costliest = max(
            range(len(batches)), key=lambda b: len(batches[b]) * max(lengths[i] for i in batches[b])
        )
        batches.insert(0, batches.pop(costliest))
    return batches


def batch_sampler_class() -> type:
    """The batch sampler, built on transformers' ``BatchRebalanceSampler`` for one reason: transformers'
    ``Trainer._get_dataloader`` hands an instance of that class to the DataLoader as its ``batch_sampler``
    (batches of varying size) and leaves the split across processes to the sampler itself."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    class LengthGroupedBatches(BatchRebalanceSampler):
        """:func:`plan_batches` as a batch sampler; each process takes every ``world``-th batch."""

        def __init__(
            self,
            lengths: Sequence[int],
            rows: int,
            seed: int,
            token_budget: int | None = None,
            pad_multiple: int = 1,
            rank: int = 0,
            world: int = 1,
        ):  # no super().__init__: none of BatchRebalanceSampler's own state is used
            self.lengths = list(lengths)
            self.rows, self.seed, self.token_budget = rows, seed, token_budget
            self.pad_multiple, self.rank, self.world = pad_multiple, rank, max(1, world)
            self.epoch = 0
            self._planned: tuple[int, list[list[int]]] | None = None

        def _mine(self) -> list[list[int]]:
            if self._planned is None or self._planned[0] != self.epoch:  # len() is asked often
                batches = plan_batches(
                    self.lengths, self.rows, self.seed, self.epoch, self.token_budget, self.pad_multiple
                )
                per_rank = len(batches) // self.world if self.world > 1 else len(batches)
                self._planned = (self.epoch, batches[self.rank :: self.world][:per_rank])
            return self._planned[1]

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self) -> Iterator[list[int]]:
            return iter(self._mine())

        def __len__(self) -> int:
            return len(self._mine())

    return LengthGroupedBatches


def token_budget_option(value: Any, max_len: int, packing: bool) -> int | None:
    """``treinamento.tokens_por_lote`` checked (the rules are afinar.config.checks', which validate uses):
    null = batches of ``batch_size`` records."""
    problem = token_budget_problem(value, max_len, packing)
    if problem:
        raise AfinarError(problem)
    return None if value is None else int(value)


def use_length_grouping(tr: Any) -> bool:
    """Our sampler replaces the trainer's (``tr``: the typed ``treinamento`` settings): length grouping on
    (the default) or a token budget set, and no packing."""
    return not tr.packing and (tr.agrupar_por_tamanho or tr.tokens_por_lote is not None)


def plan_pad_multiple(padding: dict[str, Any]) -> int:
    """The rounding a batch's cost is planned with: a padded batch's width is rounded to
    ``pad_to_multiple_of``; a padding-free row costs its tokens (its rounding is added once, not per record)."""
    return 1 if padding.get("padding_free") else int(padding.get("pad_to_multiple_of") or 1)


def check_options(tr: Any, backend: str, cuda: bool) -> None:
    """Every ``tokens_por_lote``/``liger_kernel`` error as one line, before anything heavy loads."""
    token_budget_option(tr.tokens_por_lote, tr.max_seq_length, tr.packing)
    liger_option(tr.liger_kernel, backend, cuda)


def steps_per_epoch(
    lengths: Sequence[int],
    rows: int,
    accum: int,
    seed: int,
    token_budget: int | None,
    pad_multiple: int,
    world: int = 1,
) -> int:
    """Optimizer steps of one epoch (the first epoch's plan; later epochs differ by a batch or two); with
    ``world`` processes each takes every world-th batch, cut to the same count."""
    batches = len(plan_batches(lengths, rows, seed, 0, token_budget, pad_multiple))
    per_rank = batches // world if world > 1 else batches
    return max(1, -(-per_rank // max(1, accum)))


def install(trainer: Any, lengths: Sequence[int], token_budget: int | None, pad_multiple: int) -> None:
    """Make ``trainer`` draw its training batches from :class:`LengthGroupedBatches`.

    An instance attribute, so it works on TRL's and on Unsloth's patched trainer class alike."""
    args = trainer.args
    sampler = batch_sampler_class()(
        lengths,
        rows=int(args.per_device_train_batch_size),
        seed=int(args.data_seed if args.data_seed is not None else args.seed),
        token_budget=token_budget,
        pad_multiple=pad_multiple,
        rank=int(args.process_index),
        world=int(args.world_size),
    )
    trainer._get_train_sampler = lambda train_dataset=None: sampler
    if token_budget:
        sizes = [len(b) for b in plan_batches(lengths, 1, sampler.seed, 0, token_budget, pad_multiple)]
        log.info(
            "batches of up to %d tokens: %d micro-batches per epoch, %d-%d records each (mean %.1f)",
            token_budget,
            len(sizes),
            min(sizes),
            max(sizes),
            sum(sizes) / len(sizes),
        )


def liger_option(value: Any, backend: str, cuda: bool) -> dict[str, Any]:
    """``treinamento.liger_kernel`` as SFTConfig keyword arguments.

    Liger Kernel's fused Triton kernels (RMSNorm, SwiGLU, RoPE) on the transformers backend; TRL 1.15
    keeps its own chunked LM head instead of Liger's fused cross-entropy. Unsloth has kernels of its own."""
    if not value:
        return {}
    if backend != "transformers":
        log.info("liger_kernel ignored on the %s backend (it uses its own fused kernels)", backend)
        return {}
    if not cuda:
        raise AfinarError(
            "treinamento.liger_kernel: Liger's Triton kernels need a CUDA GPU — set it to false"
        )
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise AfinarError(
            "treinamento.liger_kernel: liger-kernel is not installed — pip install liger-kernel==0.8.5 "
            "(requirements/lock-gpu.txt) or set it to false"
        )
    return {"use_liger_kernel": True}
