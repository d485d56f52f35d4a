"""Checkpoints of a training run: where they are, which one is complete, whether they still apply.

The original tool wrote checkpoints to one folder and looked for them in another, so resume never
happened (bug B2). Here checkpoints live in ``results/{exp}/checkpoints/`` (not a declared Snakemake
output, so a failed job does not delete them), a run resumes from the newest *complete* checkpoint, and
a fingerprint of the training inputs guards against resuming a run whose config or data changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from afinar.io import atomic_write_json

log = logging.getLogger("afinar.train.checkpoints")

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (
    "adapter_model.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
FINGERPRINT_FILE = "afinar_run.json"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(ckpt: str | Path) -> bool:
    """A checkpoint can be resumed from when its state, weights, optimizer and scheduler are all there.

    A job killed while saving leaves some of these missing or ``trainer_state.json`` truncated.
    """
    ckpt = Path(ckpt)
    state = ckpt / "trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
        int(data["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    has_weights = any((ckpt / name).is_file() and (ckpt / name).stat().st_size > 0 for name in _WEIGHTS)
    # optimizer.bin: FSDP's (full state dict) optimizer file, written by accelerate instead of optimizer.pt
    has_optimizer = any((ckpt / name).is_file() for name in ("optimizer.pt", "optimizer.bin"))
    return has_weights and has_optimizer and (ckpt / "scheduler.pt").is_file()


def latest_complete(folder: str | Path) -> Path | None:
    """Newest complete checkpoint; incomplete newer ones are skipped (and named in the log)."""
    for ckpt in reversed(list_checkpoints(folder)):
        if is_complete(ckpt):
            return ckpt
        log.warning("checkpoint %s is incomplete (interrupted while saving?): trying the previous one", ckpt)
    return None


def checkpoint_step(ckpt: str | Path) -> int:
    """Global step recorded in a checkpoint's trainer state."""
    return int(json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (data splits are small next to a training run)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(settings: dict[str, Any], files: list[str | Path]) -> str:
    """Digest of what determines a training run: its settings and its input files' contents."""
    payload = json.dumps(settings, sort_keys=True, default=str) + "".join(file_digest(f) for f in files)
    return hashlib.sha256(payload.encode()).hexdigest()


def prepare_folder(folder: str | Path, fingerprint: str, resume: bool) -> Path | None:
    """Return the checkpoint to resume from, or None after clearing checkpoints that no longer apply.

    Checkpoints made with other settings or data (the fingerprint differs), of a run that finished, or
    when resuming is off are removed, so that a fresh run never mixes with an old one; live metric files
    go with them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / FINGERPRINT_FILE
    previous, finished = None, False
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            previous, finished = data.get("fingerprint"), bool(data.get("concluido"))
        except (OSError, json.JSONDecodeError):
            previous = None
    ckpt = latest_complete(folder) if resume and previous == fingerprint and not finished else None
    if ckpt is None:
        if list_checkpoints(folder) and previous != fingerprint:
            log.info("config or data changed since the checkpoints in %s were made: starting over", folder)
        elif finished:
            log.info("the checkpoints in %s belong to a finished run: training again from the start", folder)
        clear(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": fingerprint})
    return ckpt


def mark_finished(folder: str | Path) -> None:
    """Record that the run finished: a later run (forced, or after deleting outputs) starts over
    instead of "resuming" a completed training."""
    marker = Path(folder) / FINGERPRINT_FILE
    if marker.is_file():
        data = json.loads(marker.read_text(encoding="utf-8"))
        atomic_write_json(marker, {**data, "concluido": True})


def clear(folder: str | Path) -> None:
    """Remove the checkpoint folder and everything in it (after success, or before a fresh start)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
