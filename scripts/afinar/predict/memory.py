"""RAM and GPU memory during prediction: the seed's ``memoria_predicao.jsonl`` and ``memoria_predicao.png``.

Sampling is ``afinar.monitor.BackgroundSampler`` (a thread, non-blocking), every 0.5 s as in the seed;
its rows carry the seed's fields (``timestamp``, ``datetime``, ``ram_usada_gb``, ``ram_total_gb``,
``gpu_usada_gb`` = memory reserved summed over visible GPUs, ``gpu_total_gb``, ``num_gpus``) plus the
monitor's other hardware fields. The chart follows the seed (§7.4): seconds on x, GB on y, RAM in blue,
GPU in red (only when a GPU was used), a box with the maxima.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("afinar.predict.memory")

SAMPLE_INTERVAL_S = 0.5
TITLE = "Memory during prediction"  # English like every other chart (the seed titled it in Portuguese)


def memory_sampler(path: str | Path, interval_s: float = SAMPLE_INTERVAL_S) -> Any:
    """A context manager that samples into ``path`` (started afresh: one prediction run per file)."""
    from afinar.monitor import BackgroundSampler

    return BackgroundSampler(path, interval_s=interval_s, extra=None, append=False)


def read_samples(path: str | Path) -> list[dict]:
    """Rows of a memory JSONL; a torn last line (process killed mid-write) is skipped, not fatal."""
    rows: list[dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_prediction_memory(jsonl: str | Path, png: str | Path) -> Path:
    """Draw the seed's memory chart from ``jsonl`` into ``png`` (written atomically); returns ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from afinar.io import atomic_path

    rows = [r for r in read_samples(jsonl) if isinstance(r.get("timestamp"), int | float)]
    fig, ax = plt.subplots(figsize=(12, 6), dpi=150)
    try:
        if rows:
            t0 = rows[0]["timestamp"]
            xs = [r["timestamp"] - t0 for r in rows]
            ram = [float(r.get("ram_usada_gb") or 0.0) for r in rows]
            gpu = [float(r.get("gpu_usada_gb") or 0.0) for r in rows]
            n_gpus = max(int(r.get("num_gpus") or 0) for r in rows)
            ax.plot(xs, ram, color="tab:blue", linewidth=1.8, label="RAM used (machine)")
            ax.fill_between(xs, ram, color="tab:blue", alpha=0.15)
            box = f"RAM peak: {max(ram):.2f} GB"
            if any(g > 0 for g in gpu):
                ax.plot(xs, gpu, color="tab:red", linewidth=1.8, label=f"GPU reserved ({n_gpus} GPU)")
                ax.fill_between(xs, gpu, color="tab:red", alpha=0.15)
                box += f"\nGPU peak: {max(gpu):.2f} GB ({n_gpus} GPU{'s' if n_gpus != 1 else ''})"
            ax.text(
                0.01,
                0.97,
                box,
                transform=ax.transAxes,
                va="top",
                ha="left",
                fontsize=10,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
            )
            ax.set_ylim(bottom=0, top=max(max(ram), max(gpu)) * 1.15 or 1.0)
            ax.set_xlim(left=0, right=max(xs[-1], 1e-3))
            ax.legend(loc="upper right")
        else:
            ax.text(
                0.5,
                0.5,
                "No memory samples were recorded",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=12,
                color="0.4",
            )
        ax.set_title(TITLE, fontsize=13, fontweight="bold")
        ax.set_xlabel("seconds since the start")
        ax.set_ylabel("memory (GB)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    if rows:
        ram = [float(r.get("ram_usada_gb") or 0.0) for r in rows]
        gpu = [float(r.get("gpu_usada_gb") or 0.0) for r in rows]
        log.info(
            "memory during prediction: RAM max %.2f GB (mean %.2f), GPU max %.2f GB (mean %.2f), %d samples",
            max(ram),
            sum(ram) / len(ram),
            max(gpu),
            sum(gpu) / len(gpu),
            len(rows),
        )
    return Path(png)
