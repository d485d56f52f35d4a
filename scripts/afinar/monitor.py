"""Hardware sampling that never blocks the work it watches.

The original tool took two 1-second CPU samples every time it logged hardware (about 2 s of stalled
training each time, bug B18). Here a daemon thread samples at a fixed interval with non-blocking
``psutil.cpu_percent(interval=None)`` calls and appends JSON lines; the training or prediction loop only
ever reads a shared dict (``extra``) to tag samples with the current step.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("afinar.monitor")
GB = 1024**3


def _gpu_fields() -> dict[str, float]:
    """Per visible GPU: reserved, allocated and peak reserved memory in GB (empty without CUDA).

    torch is imported lazily and only if already loaded, so sampling never initialises CUDA itself.
    """
    torch = __import__("sys").modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    fields: dict[str, float] = {}
    for i in range(torch.cuda.device_count()):
        fields[f"gpu{i}_reservada_gb"] = round(torch.cuda.memory_reserved(i) / GB, 3)
        fields[f"gpu{i}_alocada_gb"] = round(torch.cuda.memory_allocated(i) / GB, 3)
        fields[f"gpu{i}_max_reservada_gb"] = round(torch.cuda.max_memory_reserved(i) / GB, 3)
    return fields


def nvml_targets(visible: str | None) -> list[tuple[str, str]]:
    """How to find each GPU of ``CUDA_VISIBLE_DEVICES`` in NVML: ``("index", "3")`` or ``("uuid", "GPU-..")``.

    Unset = every GPU of the machine (``[]``: the caller enumerates). MIG slices are not looked up."""
    if visible is None:
        return []
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            out.append(("index", entry))
        elif entry.startswith("GPU-"):
            out.append(("uuid", entry))
    return out


def _device_fields() -> dict[str, float]:
    """Per GPU of this node's job: the memory in use on the device (NVML: every process on it), in GB.

    A distributed run has one process per GPU and each process's allocator only knows its own GPU, so the
    node's sampler (local rank 0) asks the driver instead, under the usual field names; empty when
    ``pynvml`` (nvidia-ml-py) is missing or NVML fails (the per-process fields are used then)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        targets = nvml_targets(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if targets:
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(int(v))
                if kind == "index"
                else pynvml.nvmlDeviceGetHandleByUUID(v)
                for kind, v in targets
            ]
        else:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        fields: dict[str, float] = {}
        for i, handle in enumerate(handles):
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            fields[f"gpu{i}_reservada_gb"] = round(info.used / GB, 3)
        fields["gpu_usada_gb"] = round(sum(v for v in fields.values()), 3)
        fields["gpu_total_gb"] = round(sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles) / GB, 3)
        fields["num_gpus"] = len(handles)
        return fields
    except Exception as exc:  # NVML errors (no driver, MIG, permissions): fall back, never stop sampling
        log.debug("NVML sampling failed: %s", exc)
        return {}


def gpu_totals() -> tuple[float, float, int]:
    """(used GB = sum of reserved over visible GPUs, total GB, number of GPUs); zeros without CUDA."""
    torch = __import__("sys").modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0, 0.0, 0
    n = torch.cuda.device_count()
    used = sum(torch.cuda.memory_reserved(i) for i in range(n)) if torch.cuda.is_initialized() else 0
    total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(n))
    return round(used / GB, 3), round(total / GB, 3), n


def hardware_snapshot(process: psutil.Process | None = None, device_level: bool = False) -> dict[str, Any]:
    """One sample with the seed's field names (spec §6.6). Non-blocking: CPU % is since the last call.

    ``device_level`` (a distributed training's node sampler): per-GPU memory as the driver sees it, for
    every GPU of the job on this node (see :func:`_device_fields`)."""
    process = process or psutil.Process(os.getpid())
    mem = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(os.getcwd()).percent
    except OSError:
        disk = None
    now = time.time()
    used, total, n = gpu_totals()
    snap: dict[str, Any] = {
        "timestamp": round(now, 3),
        "datetime": datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_uso_%": psutil.cpu_percent(interval=None),
        "cpu_uso_processo_%": process.cpu_percent(interval=None),
        "ram_usada_gb": round((mem.total - mem.available) / GB, 3),
        "ram_disponivel_gb": round(mem.available / GB, 3),
        "ram_total_gb": round(mem.total / GB, 3),
        "ram_uso_%": mem.percent,
        "ram_processo_gb": round(process.memory_info().rss / GB, 3),
        "disco_uso_%": disk,
        "gpu_usada_gb": used,
        "gpu_total_gb": total,
        "num_gpus": n,
    }
    device = _device_fields() if device_level else {}
    if device:
        snap.update(device)
    else:
        snap.update(_gpu_fields())
    return snap


class BackgroundSampler:
    """Append ``hardware_snapshot()`` (plus ``extra()``) to a JSONL file every ``interval_s`` seconds.

    Use as a context manager. ``sample_now()`` writes one tagged sample immediately from the caller's
    thread (cheap: no blocking CPU measurement) for events such as train begin/end or an evaluation.
    ``append=True`` keeps earlier lines, so a resumed training run extends its history (bug B2).
    """

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 2.0,
        extra: Callable[[], dict[str, Any]] | None = None,
        append: bool = True,
        device_level: bool = False,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.extra = extra
        self.append = append
        self.device_level = device_level
        self._device_max: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process(os.getpid())
        self.samples = 0
        self.peaks: dict[str, float] = {}

    def sample_now(self, **tags: Any) -> dict[str, Any]:
        """Write one sample now, tagged with ``extra()`` and ``tags``; returns it."""
        row = hardware_snapshot(self._process, self.device_level)
        for key in [
            k for k in row if k.startswith("gpu") and k.endswith("_reservada_gb") and k[3:4].isdigit()
        ]:
            peak_key = key.replace("_reservada_gb", "_max_reservada_gb")
            if peak_key not in row:  # device-level samples: the running peak, as torch's own field would be
                self._device_max[peak_key] = max(self._device_max.get(peak_key, 0.0), float(row[key]))
                row[peak_key] = self._device_max[peak_key]
        if self.extra is not None:
            try:
                row.update(self.extra())
            except Exception as exc:  # a tagging problem must never stop sampling
                log.debug("monitor extra() failed: %s", exc)
        row.update(tags)
        for key in ("ram_usada_gb", "ram_processo_gb", "gpu_usada_gb"):
            value = row.get(key)
            if isinstance(value, int | float):
                self.peaks[key] = max(self.peaks.get(key, 0.0), float(value))
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self.samples += 1
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_now()
            except Exception as exc:
                log.debug("monitor sample failed: %s", exc)

    def start(self) -> BackgroundSampler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.append and self.path.exists():
            self.path.unlink()
        psutil.cpu_percent(interval=None)  # prime the non-blocking CPU counters
        self._process.cpu_percent(interval=None)
        self._thread = threading.Thread(target=self._run, name="afinar-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None

    def __enter__(self) -> BackgroundSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
