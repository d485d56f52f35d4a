"""Trainer callbacks that write the seed's metric files (spec §6.6), append-only across resumes.

``metrics_stream.jsonl`` gets each Trainer log dict once (the original wrote eval lines twice, B18);
``training_metrics.jsonl`` gets the events ``train_begin``/``log``/``evaluate``/``train_end`` with the
moving average, best-eval flag and progress. Files are opened in append mode, so a resumed run extends
the history instead of truncating it (B2). ``shared`` is a plain dict that the hardware sampler's thread
reads to tag its samples with the current step, epoch and phase.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("afinar.train.callbacks")


def _append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _now() -> tuple[float, str]:
    t = time.time()
    return round(t, 3), datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _round(value: Any, nd: int = 6) -> Any:
    return round(value, nd) if isinstance(value, float) else value


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


class MetricsCallback(TrainerCallback):
    """Write ``metrics_stream.jsonl`` and ``training_metrics.jsonl``; keep ``shared`` step/epoch current."""

    def __init__(
        self, stream_path: str | Path, training_path: str | Path, shared: dict[str, Any], sampler: Any = None
    ):
        self.stream_path = Path(stream_path)
        self.training_path = Path(training_path)
        self.shared = shared
        self.sampler = sampler
        self.losses: deque[float] = deque(maxlen=10)
        self.best_eval: float | None = None
        self.start = time.time()
        self.last_eval: dict[str, Any] = {}

    def _tag(self, state: Any, fase: str) -> None:
        self.shared.update({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "fase": fase})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.time()
        self._tag(state, "train_begin")
        # On resume, the best eval so far is in the restored state; keep the best-eval flag honest.
        for entry in state.log_history or []:
            if "eval_loss" in entry and (self.best_eval is None or entry["eval_loss"] < self.best_eval):
                self.best_eval = entry["eval_loss"]
            if "loss" in entry:
                self.losses.append(float(entry["loss"]))
        ts, dt = _now()
        _append(
            self.training_path,
            {
                "event": "train_begin",
                "timestamp": ts,
                "datetime": dt,
                "step": state.global_step,
                "resumed": state.global_step > 0,
                "total_steps": state.max_steps,
                "num_epochs": args.num_train_epochs,
                "batch_size": args.per_device_train_batch_size,
                "grad_accum_steps": args.gradient_accumulation_steps,
            },
        )
        if self.sampler is not None:
            self.sampler.sample_now(fase="train_begin")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tag(state, "train")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        logs = dict(logs or {})
        ts, _ = _now()
        _append(self.stream_path, {**logs, "step": state.global_step, "epoch": state.epoch, "time": ts})
        row: dict[str, Any] = {
            "event": "log",
            "timestamp": ts,
            "step": state.global_step,
            "epoch": _round(state.epoch, 4),
            "elapsed_seconds": round(time.time() - self.start, 2),
        }
        if "loss" in logs:
            loss = float(logs["loss"])
            self.losses.append(loss)
            row["train_loss"] = round(loss, 6)
            if len(self.losses) >= 10:
                row["train_loss_avg_10"] = round(sum(self.losses) / len(self.losses), 6)
        for key in ("learning_rate", "grad_norm"):
            if key in logs:
                row[key] = _round(float(logs[key]), 8)
        if "eval_loss" in logs:
            value = float(logs["eval_loss"])
            row["eval_loss"] = round(value, 6)
            if self.best_eval is None or value < self.best_eval:
                self.best_eval = value
                row["is_best_eval"] = True
        if state.max_steps:
            row["progress_%"] = round(100.0 * state.global_step / state.max_steps, 2)
        if len(row) > 5:  # only lines that carry a metric (the final train summary goes to the stream)
            _append(self.training_path, row)
        every = max(1, (state.max_steps or 20) // 20)
        if "eval_loss" in row or ("train_loss" in row and state.global_step % every == 0):
            log.info(
                "step %d/%d (%.0f%%)%s%s",
                state.global_step,
                state.max_steps,
                row.get("progress_%", 0.0),
                f" loss {row['train_loss']:.4f}" if "train_loss" in row else "",
                f" eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else "",
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self._tag(state, "eval")
        ts, dt = _now()
        row = {
            "event": "evaluate",
            "timestamp": ts,
            "datetime": dt,
            "step": state.global_step,
            "epoch": _round(state.epoch, 4),
        }
        row.update({k: _round(float(v)) for k, v in (metrics or {}).items() if isinstance(v, int | float)})
        self.last_eval = row
        _append(self.training_path, row)
        if self.sampler is not None:
            self.sampler.sample_now(fase="eval")
        self._tag(state, "train")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tag(state, "train_end")
        elapsed = time.time() - self.start
        ts, dt = _now()
        _append(
            self.training_path,
            {
                "event": "train_end",
                "timestamp": ts,
                "datetime": dt,
                "total_steps": state.global_step,
                "final_epoch": _round(state.epoch, 4),
                "total_time_seconds": round(elapsed, 2),
                "total_time_formatted": _fmt_duration(elapsed),
                "best_eval_loss": self.best_eval,
                "final_train_loss_avg": round(sum(self.losses) / len(self.losses), 6)
                if self.losses
                else None,
            },
        )
        if self.sampler is not None:
            self.sampler.sample_now(fase="train_end")


class StopAfterSteps(TrainerCallback):
    """Raise ``KeyboardInterrupt`` once ``global_step`` reaches ``steps``: a Ctrl-C at a known point.

    Used by tests (and handy for debugging) to interrupt a run right after a checkpoint was written.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.steps:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")


class BlockAfterSave(TrainerCallback):
    """Once a checkpoint of step >= ``steps`` is saved: write ``marker`` (holding the step), then block.

    A kill test needs the process to be killed at a known point. Waiting for a checkpoint folder and then
    sleeping was a race: on a fast GPU training finished and rotated that checkpoint away in the sleep.
    Here training stops right after the checkpoint and its rotation are complete, and stays there until
    the test kills it (SIGKILL, like an out-of-memory kill or a SLURM time limit): nothing depends on speed.
    """

    def __init__(self, steps: int, marker: str | Path) -> None:
        self.steps = steps
        self.marker = Path(marker)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step < self.steps:
            return
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(str(state.global_step), encoding="utf-8")
        tmp.replace(self.marker)  # atomic: the test never reads a half-written step
        import threading

        threading.Event().wait()  # until killed
