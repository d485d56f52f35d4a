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
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.resume")

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


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

    def __init__(self, minutes: float | None, on_signal: bool = True, clock: Any = time.monotonic):
        self.interval_s = float(minutes) * 60 if minutes else None
        self.on_signal = on_signal
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
    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
        elif self.interval_s is not None and self.clock() - self.last_save >= self.interval_s:
            log.info("checkpoint_minutos: %.0f s since the last checkpoint", self.clock() - self.last_save)
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = self.clock()
        if self.signal_name is not None:
            self.stopped_at = state.global_step
            raise TrainingInterrupted(
                f"training stopped by {self.signal_name} at step {state.global_step}/{state.max_steps} after "
                f"writing checkpoint-{state.global_step} in {args.output_dir} — run snakemake again to resume"
            )
