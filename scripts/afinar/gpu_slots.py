"""GPUs per job (one, or N for a distributed training) when Snakemake runs several jobs at once on a
multi-GPU workstation.

``snakemake --resources gpu=2`` lets two ``train`` jobs run together, but Snakemake does not say which
GPU each should use: both would see every GPU and pile onto GPU 0. Each job therefore claims its GPUs:
an exclusive ``fcntl.flock`` on ``gpu-<id>.lock`` in a shared folder per GPU, all of a job's GPUs at once
(two 2-GPU jobs on a 4-GPU machine never share a card), and narrows ``CUDA_VISIBLE_DEVICES`` to them
*before* torch is imported (CUDA reads the variable once); the training processes a distributed job
starts inherit it. The kernel drops the lock when
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


def machine_has_gpu(env: dict[str, str] | None = None, dev: Path = Path("/dev")) -> bool:
    """Whether a job started here can see an NVIDIA GPU (no torch import): a non-empty
    ``CUDA_VISIBLE_DEVICES``, a ``/dev/nvidia<N>`` device, or a GPU listed by ``nvidia-smi``. Errs on the
    side of yes: a container without ``nvidia-smi`` still has the device files."""
    env = dict(os.environ) if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return bool(visible_gpus(env))
    if any(dev.glob("nvidia[0-9]*")):
        return True
    return bool(visible_gpus(env))


def line_is_gpu(line: str) -> bool:
    return line.startswith("GPU ")


@dataclass
class GpuSlot:
    """Claimed GPUs; the locks live as long as this object's file handles (or the process)."""

    gpus: list[str] = field(default_factory=list)
    lock_paths: list[Path] = field(default_factory=list)
    _handles: list[IO] = field(default_factory=list, repr=False)

    @property
    def gpu(self) -> str | None:
        """The first claimed GPU (the only one of a one-GPU job); None without a GPU."""
        return self.gpus[0] if self.gpus else None

    @property
    def lock_path(self) -> Path | None:
        return self.lock_paths[0] if self.lock_paths else None

    def release(self) -> None:
        for handle in self._handles:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._handles = []

    def __enter__(self) -> GpuSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _safe(gpu: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu)


def try_claim(gpus: list[str], lock_dir: Path, n: int = 1) -> GpuSlot | None:
    """Lock ``n`` free GPUs of ``gpus`` at once; None (holding nothing) when fewer than ``n`` are free.

    All or nothing: a job that held some GPUs while waiting for more could deadlock with another job
    doing the same, so partial claims are given back at once."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    slot = GpuSlot()
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
        slot.gpus.append(gpu)
        slot.lock_paths.append(path)
        slot._handles.append(handle)
        if len(slot.gpus) == n:
            return slot
    slot.release()
    return None


def claim_gpus(
    n: int = 1,
    gpus: list[str] | None = None,
    lock_dir: str | Path | None = None,
    timeout_s: float = 0.0,
    poll_s: float = 2.0,
    set_env: bool = True,
) -> GpuSlot:
    """Claim ``n`` GPUs for this process (and the training processes it starts) and narrow
    ``CUDA_VISIBLE_DEVICES`` to them.

    When exactly ``n`` GPUs are visible nothing is locked (nothing to share out; the usual case on a
    SLURM node, which hands each job its own). When fewer than ``n`` are free, waits up to ``timeout_s``
    (0 = fail at once) and then raises an AfinarError that says why; fewer than ``n`` visible at all is
    an AfinarError at once.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if n <= 0 or not gpus:
        return GpuSlot()
    if len(gpus) < n:
        raise AfinarError(
            f"treinamento.distribuido.gpus: {n} GPUs asked for but this job sees only {len(gpus)} "
            f"({','.join(gpus)}) — lower distribuido.gpus or run where {n} GPUs are free"
        )
    if len(gpus) == n:
        return GpuSlot(list(gpus))
    if set_env and "torch" in sys.modules:
        log.warning("torch was imported before a GPU was chosen: CUDA_VISIBLE_DEVICES may not take effect")
    lock_dir = Path(lock_dir) if lock_dir else default_lock_dir()
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        slot = try_claim(gpus, lock_dir, n)
        if slot is not None:
            if set_env:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
            log.info("using GPU(s) %s (locks in %s)", ",".join(slot.gpus), lock_dir)
            return slot
        if time.monotonic() >= deadline:
            busy = "all in use" if n == 1 else f"fewer than {n} free, the others in use"
            raise AfinarError(
                f"GPUs {','.join(gpus)}: {busy} by other afinar jobs (locks in {lock_dir}) — run with "
                "--resources gpu=N where N is at most the number of GPUs, or wait for them to finish"
            )
        if not waited:
            log.info("fewer than %d of %d GPUs are free: waiting", n, len(gpus))
            waited = True
        time.sleep(poll_s)


def claim_gpu(
    gpus: list[str] | None = None,
    lock_dir: str | Path | None = None,
    timeout_s: float = 0.0,
    poll_s: float = 2.0,
    set_env: bool = True,
) -> GpuSlot:
    """Claim one GPU (the prediction rule and one-GPU trainings): :func:`claim_gpus` with ``n=1``."""
    return claim_gpus(1, gpus, lock_dir, timeout_s, poll_s, set_env)
