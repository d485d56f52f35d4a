"""Exact resume, and checkpoints that a time limit or a signal cannot lose.

Two things make a resumed run differ from the uninterrupted one, and two lose work:

- **The epoch's order.** transformers' length-grouped sampler draws each epoch's permutation from
  torch's *global* generator when the epoch starts. After a few steps of dropout that state is whatever
  the run left it in, and a resumed run starts from another one, so from the second epoch on a resumed
  run sees other batches (first epoch: same state, same order). :class:`EpochSeededLengthGroupedSampler`
  draws epoch ``e``'s order from its own generator seeded with ``seed + e``: the same order whether the
  epoch is reached by training or by resuming, and the global RNG (dropout, restored from the
  checkpoint by the Trainer) is left alone.
- **Checkpoints only at the evaluation interval.** A time limit shorter than that interval lost every
  step. :class:`SafeCheckpoints` adds one every ``checkpoint_minutos`` of wall time and one when the
  process is asked to stop (SIGTERM from ``kill`` or SLURM's time limit, SIGUSR1 from SLURM's
  ``--signal=B:USR1@<s>``, SIGINT from Ctrl-C): the step in progress ends, the checkpoint is written in
  full (the Trainer writes ``trainer_state.json`` last, which is what
  :func:`afinar.train.checkpoints.is_complete` checks), then the run stops with
  :class:`TrainingInterrupted`. A second signal while that is under way stops at once.
- **A time limit that arrives mid-step.** Inside a SLURM job the run also reads the job's end time
  (``squeue``) and stops the same way, checkpoint first, when the next steps plus a checkpoint would no
  longer fit: whether a signal reaches this process through Snakemake's job step depends on the
  cluster (a Snakemake process above it dies on SIGTERM/SIGUSR1 at once), the end time does not.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.resume")

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def slurm_end_time(timeout_s: float = 20.0) -> float | None:
    """The current SLURM job's end time (seconds since the epoch), or None outside SLURM / when unknown."""
    job = os.environ.get("SLURM_JOB_ID")
    squeue = shutil.which("squeue")
    if not job or squeue is None:
        return None
    try:
        done = subprocess.run(
            [squeue, "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=timeout_s
        )
        return datetime.fromisoformat(done.stdout.strip().splitlines()[0]).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None  # no limit known (UNLIMITED, N/A, squeue failing): signals still work


class TrainingInterrupted(AfinarError):
    """Training stopped on a signal after writing a complete checkpoint (the next run resumes it)."""


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from ``seed + epoch`` instead of the global RNG.

    The Trainer (through accelerate's data loader) calls :meth:`set_epoch` before each epoch, also the
    epoch a resumed run starts in."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def use_epoch_seeded_sampler(trainer: Any, seed: int) -> None:
    """Make ``trainer`` build an :class:`EpochSeededLengthGroupedSampler` wherever it would build
    transformers' length-grouped one for training (other samplers are already seeded per epoch by
    accelerate, or are sequential)."""
    build = trainer._get_train_sampler

    def _train_sampler(train_dataset: Any = None) -> Any:
        sampler = build(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(sampler.batch_size, list(sampler.lengths), seed)
        return sampler

    trainer._get_train_sampler = _train_sampler


class SafeCheckpoints(TrainerCallback):
    """Checkpoint every ``minutes`` of wall time, and on SIGTERM/SIGUSR1/SIGINT before stopping.

    Use as a context manager around ``trainer.train()``: the signal handlers are installed on entry and
    the previous ones restored on exit (only with ``on_signal``). ``clock`` is injectable so tests decide
    when time has passed."""

    #: seconds kept free before a job's end time on top of the slowest step and checkpoint seen so far
    END_MARGIN_S = 15.0

    def __init__(
        self,
        minutes: float | None,
        on_signal: bool = True,
        clock: Any = time.monotonic,
        end_time: float | None = None,
        wall_clock: Any = time.time,
    ):
        self.interval_s = float(minutes) * 60 if minutes else None
        self.on_signal = on_signal
        self.end_time = end_time
        self.wall_clock = wall_clock
        self.slowest_step_s = 0.0
        self.slowest_save_s = 0.0
        self._step_start: float | None = None
        self._save_start: float | None = None
        self.clock = clock
        self.last_save = clock()
        self.signal_name: str | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    # ----------------------------------------------------------------------------- signals
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # asked twice: the user (or SLURM) means now
            log.warning("%s again while writing the checkpoint: stopping now", name)
            self.restore()
            raise KeyboardInterrupt(name)
        self.signal_name = name
        log.warning("%s received: finishing this step, writing a checkpoint, then stopping", name)

    def request_stop(self, name: str = "SIGTERM") -> None:
        """What a signal does, callable from a test or another callback at a chosen step."""
        self._handle(getattr(signal, name), None)

    def __enter__(self) -> SafeCheckpoints:
        if not self.on_signal or threading.current_thread() is not threading.main_thread():
            return self  # no checkpoints wanted, or not allowed to handle signals: they keep their meaning
        for name in STOP_SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    # ----------------------------------------------------------------------------- Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.last_save = self.clock()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._step_start = self.wall_clock()

    def _near_the_end(self) -> bool:
        """Would one more step, a checkpoint and the margin pass the job's end time?"""
        if self.end_time is None:
            return False
        needed = 2 * self.slowest_step_s + 2 * self.slowest_save_s + self.END_MARGIN_S
        return bool(self.wall_clock() + needed >= self.end_time)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = self.wall_clock()
        if self._step_start is not None:
            self.slowest_step_s = max(self.slowest_step_s, now - self._step_start)
        if self.signal_name is None and self._near_the_end():
            self.signal_name = "the SLURM time limit"
            log.warning("the job's time limit is near: writing a checkpoint and stopping")
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
        elif self.interval_s is not None and self.clock() - self.last_save >= self.interval_s:
            log.info("checkpoint_minutos: %.0f s since the last checkpoint", self.clock() - self.last_save)
            control.should_save = True
        if control.should_save:
            self._save_start = now
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.last_save = self.clock()
        if self._save_start is not None:
            self.slowest_save_s = max(self.slowest_save_s, self.wall_clock() - self._save_start)
            self._save_start = None
        if self.signal_name is not None:
            self.stopped_at = state.global_step
            raise TrainingInterrupted(
                f"training stopped by {self.signal_name} at step {state.global_step}/{state.max_steps} after "
                f"writing checkpoint-{state.global_step} in {args.output_dir} — run snakemake again to resume"
            )
