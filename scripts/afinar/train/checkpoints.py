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
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError, disk_full_message
from afinar.io import atomic_write_json

log = logging.getLogger("afinar.train.checkpoints")

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
FINGERPRINT_FILE = "afinar_run.json"
#: written last into each checkpoint: the sizes and checksums of everything the save wrote
MANIFEST_FILE = "afinar_manifest.json"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk: a power cut or kill cannot undo it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint_files(ckpt: Path) -> list[Path]:
    """Every file of a checkpoint (recursively), except its manifest, in a stable order."""
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(ckpt: str | Path) -> Path:
    """Record every file of a just-saved checkpoint (size and SHA-256) and mark it complete.

    Every file is synced to the disk first and the manifest is written (and synced) last, under a
    temporary name renamed into place: a checkpoint has a manifest only when everything in it was
    written in full, so a kill or a full disk at any moment leaves a checkpoint that is never resumed.
    """
    ckpt = Path(ckpt)
    files = {}
    for path in _checkpoint_files(ckpt):
        _fsync_path(path)
        files[path.relative_to(ckpt).as_posix()] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    for folder in {p.parent for p in _checkpoint_files(ckpt)} | {ckpt}:
        _fsync_path(folder)
    manifest = ckpt / MANIFEST_FILE
    tmp = ckpt / f".{MANIFEST_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"files": files}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, manifest)
    _fsync_path(ckpt)
    return manifest


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why a checkpoint cannot be resumed from (None when it can).

    A checkpoint is trusted only through its manifest: every file listed there must exist with the
    recorded size and checksum, so a file truncated or deleted after the save (a kill while saving,
    a full disk, a damaged copy) is caught here and not as a cryptic loader error in the middle of a run.
    """
    ckpt = Path(ckpt)
    try:
        listed = json.loads((ckpt / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    if not isinstance(listed, dict) or "trainer_state.json" not in listed:
        return f"{MANIFEST_FILE} lists no trainer_state.json"
    for name, info in sorted(listed.items()):
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != info.get("size"):
            return f"{name} has {size} bytes, {info.get('size')} were written"
        if file_digest(path) != info.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def is_complete(ckpt: str | Path) -> bool:
    """A checkpoint can be resumed from when its manifest vouches for every file in it."""
    return checkpoint_problem(ckpt) is None


def latest_complete(folder: str | Path, remove_broken: bool = False) -> Path | None:
    """Newest complete checkpoint; broken newer ones are skipped with a warning naming them.

    ``remove_broken`` deletes the broken ones newer than the chosen checkpoint: the resumed run saves
    those steps again, and a stale half-written folder must not be mistaken for (or mixed with) a new one.
    """
    broken: list[Path] = []
    chosen = None
    for ckpt in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            chosen = ckpt
            break
        log.warning(
            "checkpoint %s is broken (%s; interrupted while saving, disk full or damaged): "
            "using the previous complete one",
            ckpt,
            problem,
        )
        broken.append(ckpt)
    if remove_broken:
        for ckpt in broken:
            shutil.rmtree(ckpt, ignore_errors=True)
            log.warning("removed the broken checkpoint %s", ckpt)
    return chosen


def manifest_callback() -> Any:
    """A Trainer callback writing each checkpoint's manifest right after the Trainer saved it (see
    :func:`write_manifest`).

    Put it first among the callbacks, so that a callback stopping the run on save comes after it. With
    several processes every rank has written its part when all reach the barrier; rank 0 writes. Built on
    call: this module imports no transformers, so that Unsloth, imported later, patches it first.
    """
    from transformers import TrainerCallback

    class ManifestCallback(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    write_manifest(ckpt)

    return ManifestCallback()


@contextmanager
def unfinished_removed_on_error(folder: str | Path) -> Iterator[None]:
    """Around training: on any failure, remove checkpoints whose save did not finish (no manifest).

    Their files are useless (they are never resumed from) and, on a full disk, hold the space the log and
    the next attempt need. A full disk becomes one :class:`AfinarError` line naming the mount, the free
    space and the file being written, measured before the cleanup; the complete checkpoints are kept.
    """
    folder = Path(folder)
    started = time.time() - 1
    try:
        yield
    except BaseException as exc:
        if int(os.environ.get("RANK", "0")) != 0:
            raise
        message = disk_full_message(exc, [folder], started) if isinstance(exc, Exception) else None
        for ckpt in list_checkpoints(folder):
            if not (ckpt / MANIFEST_FILE).is_file():
                shutil.rmtree(ckpt, ignore_errors=True)
                log.warning("removed %s: its save did not finish", ckpt)
        if message is None:
            raise
        last = latest_complete(folder)
        resumes = f"training resumes from {last}" if last else "training starts over"
        raise AfinarError(f"{message} ({resumes})") from exc


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
    ckpt = (
        latest_complete(folder, remove_broken=True)
        if resume and previous == fingerprint and not finished
        else None
    )
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
