"""One GPU per training job when Snakemake runs several at once on a multi-GPU workstation.

``snakemake --resources gpu=2`` lets two ``train`` jobs run together, but Snakemake does not say which
GPU each should use: both would see every GPU and pile onto GPU 0. Each job therefore claims a slot: an
exclusive ``fcntl.flock`` on ``gpu-<id>.lock`` in a shared folder, and narrows ``CUDA_VISIBLE_DEVICES``
to that GPU *before* torch is imported (CUDA reads the variable once). The kernel drops the lock when
the process ends, however it ends (even ``kill -9``), so a crashed job never leaks its GPU.
``CUDA_VISIBLE_DEVICES`` set by the user or by SLURM is respected: only those GPUs are shared out.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from afinar.errors import AfinarError

log = logging.getLogger("afinar.gpu_slots")

LOCK_DIR_ENV = "AFINAR_GPU_LOCK_DIR"


def default_lock_dir() -> Path:
    """Machine-wide folder (per user) so that several workflows on one workstation share GPUs fairly."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"afinar-gpu-slots-{os.getuid()}"


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi`` lists.

    Found without importing torch, so that the choice can still narrow ``CUDA_VISIBLE_DEVICES``.
    """
    env = dict(os.environ) if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        value = env["CUDA_VISIBLE_DEVICES"].strip()
        if value in ("", "-1", "none", "NoDevFiles"):
            return []
        return [g.strip() for g in value.split(",") if g.strip()]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if line_is_gpu(ln))]


def line_is_gpu(line: str) -> bool:
    return line.startswith("GPU ")


@dataclass
class GpuSlot:
    """A claimed GPU; the lock lives as long as this object's file handle (or the process)."""

    gpu: str | None
    lock_path: Path | None = None
    _handle: IO | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> GpuSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _safe(gpu: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu)


def try_claim(gpus: list[str], lock_dir: Path) -> GpuSlot | None:
    """Lock the first free GPU of ``gpus``; None when all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        path = lock_dir / f"gpu-{_safe(gpu)}.lock"
        handle = open(path, "a+")  # noqa: SIM115 (kept open: the lock lives with the handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return GpuSlot(gpu, path, handle)
    return None


def claim_gpu(
    gpus: list[str] | None = None,
    lock_dir: str | Path | None = None,
    timeout_s: float = 0.0,
    poll_s: float = 2.0,
    set_env: bool = True,
) -> GpuSlot:
    """Claim one GPU for this process and narrow ``CUDA_VISIBLE_DEVICES`` to it.

    With zero or one visible GPU nothing is locked (nothing to share out). When every GPU is taken,
    waits up to ``timeout_s`` (0 = fail at once) and then raises an AfinarError that says why.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if len(gpus) <= 1:
        return GpuSlot(gpus[0] if gpus else None)
    if set_env and "torch" in sys.modules:
        log.warning("torch was imported before a GPU was chosen: CUDA_VISIBLE_DEVICES may not take effect")
    lock_dir = Path(lock_dir) if lock_dir else default_lock_dir()
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        slot = try_claim(gpus, lock_dir)
        if slot is not None:
            if set_env:
                os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu or ""
            log.info("using GPU %s (slot %s)", slot.gpu, slot.lock_path)
            return slot
        if time.monotonic() >= deadline:
            raise AfinarError(
                f"GPUs {','.join(gpus)}: all in use by other afinar jobs (locks in {lock_dir}) — run with "
                "--resources gpu=N where N is at most the number of GPUs, or wait for them to finish"
            )
        if not waited:
            log.info("all %d GPUs are busy: waiting for one to free up", len(gpus))
            waited = True
        time.sleep(poll_s)
