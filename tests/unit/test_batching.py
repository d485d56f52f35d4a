"""Batch composition (afinar.train.batching): unbiased length-grouped order, batches by token budget, and
a real CPU training run whose collated batches respect the budget."""

from __future__ import annotations

import random

import pytest
from conftest import task_rows, write_split
from test_training import BASE_TREINAMENTO, experiment, paths_for

from afinar.errors import AfinarError
from afinar.train.batching import liger_option, padded_width, plan_batches, token_budget_option
from afinar.train.training import train


def spread_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths spread like the benchmark's chats (triangular 54-665 tokens)."""
    rng = random.Random(seed)
    return [int(rng.triangular(54, 665, 360)) for _ in range(n)]


@pytest.mark.parametrize("budget", [None, 4096])
def test_every_record_is_in_exactly_one_batch(budget):
    lengths = spread_lengths(1000)
    batches = plan_batches(lengths, rows=8, seed=1, token_budget=budget, pad_multiple=64)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    if budget is None:
        assert [len(b) for b in batches].count(8) >= len(batches) - 3  # only each group's tail is short


def test_token_budget_batches_fit_and_vary_in_size():
    lengths = spread_lengths(1000)
    batches = plan_batches(lengths, rows=8, seed=2, token_budget=4096, pad_multiple=64)
    for b in batches:
        cost = len(b) * padded_width(max(lengths[i] for i in b), 64)
        assert cost <= 4096 or len(b) == 1, (len(b), cost)
    sizes = {len(b) for b in batches}
    assert min(sizes) <= 6 and max(sizes) >= 20  # long records in small batches, short ones in large
    # the costliest batch comes first, so an out-of-memory error shows at step 1
    cost = [len(b) * max(lengths[i] for i in b) for b in batches]
    assert cost[0] == max(cost)


def test_plan_is_deterministic_per_seed_and_epoch():
    lengths = spread_lengths(400)
    assert plan_batches(lengths, 8, seed=5, epoch=1) == plan_batches(lengths, 8, seed=5, epoch=1)
    assert plan_batches(lengths, 8, seed=5, epoch=1) != plan_batches(lengths, 8, seed=5, epoch=2)


def test_batch_order_is_unbiased_unlike_transformers_group_by_length():
    """Mean length of the batches at steps 2-31 (a benchmark's measuring window), averaged over seeds:
    ours stays at the data's mean; transformers' sampler (groups sorted by descending length) does not."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = spread_lengths(1600, seed=3)
    mean = sum(lengths) / len(lengths)
    ours, theirs = [], []
    for seed in range(40):
        batches = plan_batches(lengths, rows=8, seed=seed)
        ours.append(sum(lengths[i] for b in batches[1:31] for i in b) / sum(len(b) for b in batches[1:31]))
        order = get_length_grouped_indices(lengths, 8, generator=torch.Generator().manual_seed(seed))
        window = order[8:248]
        theirs.append(sum(lengths[i] for i in window) / len(window))
    ours_mean, theirs_mean = sum(ours) / len(ours), sum(theirs) / len(theirs)
    assert abs(ours_mean / mean - 1) < 0.03, (ours_mean, mean)
    assert theirs_mean / mean > 1.1, (theirs_mean, mean)  # the bias this module removes


def test_token_budget_option_checks():
    assert token_budget_option(None, 1024, packing=False) is None
    assert token_budget_option(4096, 1024, packing=False) == 4096
    with pytest.raises(AfinarError, match="at least 1024"):
        token_budget_option(512, 1024, packing=False)
    with pytest.raises(AfinarError, match="packing"):
        token_budget_option(4096, 1024, packing=True)
    with pytest.raises(AfinarError, match="positive integer"):
        token_budget_option(True, 1024, packing=False)


def test_liger_option():
    assert liger_option(False, "transformers", cuda=True) == {}
    assert liger_option(True, "unsloth", cuda=True) == {}  # Unsloth's own kernels
    with pytest.raises(AfinarError, match="CUDA"):
        liger_option(True, "transformers", cuda=False)


class _Batches:
    """Records (rows, width) of every training micro-batch the model is given (a forward pre-hook)."""

    def __init__(self):
        self.shapes: list[tuple[int, int]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, args_, kwargs_):
            if module.training:
                self.shapes.append(tuple(kwargs_["input_ids"].shape))

        model.register_forward_pre_hook(hook, with_kwargs=True)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def test_training_with_a_token_budget_uses_batches_that_fit(tiny_model_dir, tmp_path):
    """A real CPU run: every collated micro-batch fits the budget, their sizes vary with the records'
    lengths, one epoch sees every record once, and the step count is the plan's."""
    rng = random.Random(0)
    rows = task_rows(60, seed=1)
    for msgs in rows:  # lengths from about 40 to 200 tokens
        msgs[0]["content"] += " " + " ".join(
            ["Nome", "Idade", "Cidade"][rng.randrange(3)] for _ in range(rng.randrange(80))
        )
    data = tmp_path / "results" / "data"
    splits = {
        "treino": write_split(data / "treino.parquet", rows),
        "validacao": write_split(data / "validacao.parquet", task_rows(4, seed=2)),
    }
    seen = _Batches()
    budget = 640
    exp = experiment(tiny_model_dir, tokens_por_lote=budget, eval_steps=0, save_checkpoints=False)
    assert BASE_TREINAMENTO["max_seq_length"] <= budget
    summary = train(exp, paths_for(splits, "budget"), extra_callbacks=[seen], threads=2)
    assert seen.shapes and all(r * w <= budget or r == 1 for r, w in seen.shapes), seen.shapes
    assert len({r for r, _ in seen.shapes}) > 1, seen.shapes  # sizes follow the lengths
    assert sum(r for r, _ in seen.shapes) == summary["ds_train_len"] == 60
    assert summary["global_step"] == len(seen.shapes)


def test_token_budget_below_max_seq_length_is_one_clear_error(tiny_model_dir, task_splits):
    """Refused when the settings are read (afinar validate names it too), before any model loads."""
    with pytest.raises(AfinarError, match="tokens_por_lote: 100 is below max_seq_length"):
        train(
            experiment(tiny_model_dir, tokens_por_lote=100), paths_for(task_splits, "small-budget"), threads=2
        )


def test_plan_counts_the_batches_of_the_token_budget():
    """plan()'s steps (and so eval/save intervals) are the batch plan's own count, rounding included."""
    from afinar.config.settings import experiment_from_partial
    from afinar.runtime import Runtime
    from afinar.train.training import DataSizes, plan

    gpu = Runtime(backend="unsloth", precision="bf16", cuda=True, optim="adamw_8bit")
    lengths = tuple(spread_lengths(1000))
    tr = {"tokens_por_lote": 4096, "max_seq_length": 1024, "batch_size": 8, "grad_batch_size": 2}
    e = experiment_from_partial({"modelo": {"base": "org/m"}, "treinamento": tr})
    p = plan(e, gpu, DataSizes(1000, sum(lengths), 0, lengths), "ck", model_limit=4096)
    batches = plan_batches(lengths, 8, e.treinamento.seed, 0, 4096, pad_multiple=64)  # widths rounded to 64
    assert p.steps_per_epoch == -(-len(batches) // 2) and p.steps_per_epoch < 1000 / 16
    assert p.sft_args["pad_to_multiple_of"] == 64
