"""Exact resume from any epoch, and checkpoints written on a signal or by wall time (real CPU training).

The reference is one uninterrupted run; the others are stopped at a chosen step (by a callback, never by
timing) and resumed. Loss at every logged step, every evaluation and the adapter's bytes must match.
"""

from __future__ import annotations

import signal

import pytest
from transformers import TrainerCallback

from afinar.io import read_jsonl
from afinar.train import checkpoints
from afinar.train.resume import SafeCheckpoints, TrainingInterrupted
from afinar.train.training import train
from tests.unit.test_training import experiment, paths_for

STEPS_PER_EPOCH = 6  # 48 training records, batch 8


def three_epochs(model_dir, **extra):
    """3 epochs of 6 steps, a checkpoint every 4 steps, dropout on (the global RNG matters)."""
    return experiment(
        model_dir,
        epochs=3,
        batch_size=8,
        eval_steps=4,
        save_total_limit=None,
        checkpoint_minutos=0,
        lora={"dropout": 0.1},
        **extra,
    )


class KillAtStep(TrainerCallback):
    """A hard kill right after optimizer step ``step``: no checkpoint, nothing saved (like SIGKILL)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


class SignalAtStep(TrainerCallback):
    """What SLURM's --signal does, at a chosen step: SIGUSR1 to this very process."""

    def __init__(self, step: int, name: str = "SIGUSR1"):
        self.step, self.name = step, name

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:  # raised while step `self.step` runs
            signal.raise_signal(getattr(signal, self.name))


def losses(paths) -> dict[int, float]:
    """Step → logged training loss (the last value logged for a step wins: the resumed attempt's)."""
    return {r["step"]: r["loss"] for r in read_jsonl(paths.metrics_stream) if "loss" in r}


def eval_losses(paths) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in read_jsonl(paths.metrics_stream) if "eval_loss" in r}


def adapter_bytes(paths) -> bytes:
    return (paths.adapter / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run."""
    from tests.unit.conftest import task_rows, write_split

    data = tmp_path_factory.mktemp("resume") / "results" / "data"
    splits = {
        "treino": write_split(data / "treino.parquet", task_rows(48, seed=1)),
        "validacao": write_split(data / "validacao.parquet", task_rows(8, seed=2)),
        "teste": write_split(data / "teste.parquet", task_rows(16, seed=3)),
    }
    paths = paths_for(splits, "reference")
    summary = train(three_epochs(tiny_model_dir), paths)
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH
    return splits, paths


def test_resume_from_a_second_epoch_checkpoint_is_exact(tiny_model_dir, reference):
    splits, ref = reference
    exp = three_epochs(tiny_model_dir)
    paths = paths_for(splits, "killed")
    with pytest.raises(KeyboardInterrupt):
        train(exp, paths, extra_callbacks=[KillAtStep(10)])  # epoch 2, two steps after checkpoint-8
    assert checkpoints.checkpoint_step(checkpoints.latest_complete(paths.checkpoints)) == 8
    summary = train(exp, paths)
    assert summary["retomado_de"].endswith("checkpoint-8")
    steps = [r["step"] for r in read_jsonl(paths.metrics_stream) if "loss" in r]
    # both attempts' history is kept (the kill came before step 10 was logged)
    assert steps == list(range(1, 10)) + list(range(9, 19))
    assert losses(paths) == losses(ref) and len(losses(ref)) == 18
    assert eval_losses(paths) == eval_losses(ref)
    assert adapter_bytes(paths) == adapter_bytes(ref)


def test_signal_writes_a_checkpoint_at_that_step_and_resume_is_exact(tiny_model_dir, reference):
    splits, ref = reference
    exp = three_epochs(tiny_model_dir)
    paths = paths_for(splits, "signalled")
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(TrainingInterrupted, match=r"SIGUSR1 at step 14/18 .*checkpoint-14"):
        train(exp, paths, extra_callbacks=[SignalAtStep(14)])  # epoch 3, not a save step
    assert signal.getsignal(signal.SIGUSR1) is before  # handlers restored
    assert not paths.adapter.exists()
    newest = checkpoints.latest_complete(paths.checkpoints)
    assert newest is not None and newest.name == "checkpoint-14"
    summary = train(exp, paths)
    assert summary["retomado_de"].endswith("checkpoint-14")
    assert losses(paths) == losses(ref)
    assert eval_losses(paths) == eval_losses(ref)
    assert adapter_bytes(paths) == adapter_bytes(ref)


def test_checkpoints_by_wall_time(tiny_model_dir, reference):
    """checkpoint_minutos: a checkpoint whenever that much (fake) time passed, none otherwise."""
    splits, _ = reference
    exp = experiment(tiny_model_dir, batch_size=8, max_steps=8, eval_steps=100)  # interval beyond the run

    def saved_steps(name, extra):
        steps = []

        class Saved(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                steps.append(state.global_step)

        train(exp, paths_for(splits, name), extra_callbacks=[*extra, Saved()])
        return steps

    assert saved_steps("untimed", []) == [8]  # the last step's only
    ticks = iter(range(10_000))
    safe = SafeCheckpoints(minutes=2, clock=lambda: 60.0 * next(ticks))  # a minute per look at the clock
    steps = saved_steps("timed", [safe])
    assert len([s for s in steps if s < 8]) >= 3 and steps == sorted(set(steps)), steps


def test_a_known_job_end_time_stops_with_a_checkpoint_before_it(tiny_model_dir, reference):
    """Inside SLURM the job's end time is known: the run checkpoints and stops while a step still fits."""
    splits, _ = reference
    exp = experiment(tiny_model_dir, batch_size=8, max_steps=30, eval_steps=100)
    seconds = iter(range(0, 100_000))
    fake_now = lambda: float(next(seconds))  # noqa: E731 — one second per look at the clock
    safe = SafeCheckpoints(None, end_time=60.0, wall_clock=fake_now)
    paths = paths_for(splits, "deadline")
    with pytest.raises(TrainingInterrupted, match="SLURM time limit at step"):
        train(exp, paths, extra_callbacks=[safe])
    newest = checkpoints.latest_complete(paths.checkpoints)
    assert newest is not None and checkpoints.checkpoint_step(newest) == safe.stopped_at
    assert 0 < safe.stopped_at < 30
