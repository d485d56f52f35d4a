"""Training, hardware, data and evaluation charts of one experiment (``grafico_*.png``).

The seed's pending list asked for charts of the training metrics, with old charts removed before new
ones are drawn. Every chart here is always written, even when its data is missing (a resumed run with
no evaluation, a CPU run with no GPU, a text task with no JSON fields): the workflow declares a fixed
list of outputs, and a chart that *says* "no data, because ..." is more useful than a missing file.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas rather than ``pyplot``, so no
global figure state leaks between charts (or between tests), and every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from afinar import layout
from afinar.errors import AfinarError  # noqa: E402
from afinar.io import atomic_path, atomic_write_json  # noqa: E402

log = logging.getLogger("afinar.report.charts")

CHART_NAMES: tuple[str, ...] = (
    "grafico_loss.png",
    "grafico_learning_rate.png",
    "grafico_grad_norm.png",
    "grafico_hardware.png",
    "grafico_tokens.png",
    "grafico_campos.png",
)
"""The fixed set of charts the ``charts`` rule declares and always writes."""

SPLITS: tuple[str, ...] = layout.SPLITS
SPLIT_LABELS = {"treino": "train", "validacao": "validation", "teste": "test"}
SPLIT_COLORS = {"treino": "#1f77b4", "validacao": "#ff7f0e", "teste": "#2ca02c"}
FINETUNED_COLOR = "#1f77b4"
BASE_COLOR = "#9e9e9e"
DPI = 120
RC = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.framealpha": 0.85,
}


# --------------------------------------------------------------------------------------------- reading


def read_jsonl_lenient(path: str | Path | None) -> list[dict]:
    """Read a JSON-lines metrics file, tolerating a missing file and broken lines.

    Metric files are appended to while training runs and across resumes; a job killed mid-write can
    leave a truncated last line. That must not stop the charts of an otherwise complete run, so bad
    lines are skipped with a warning instead of failing.
    """
    if not path or not Path(path).exists():
        return []
    rows: list[dict] = []
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (interrupted write?)", path, bad)
    return rows


def read_json_lenient(path: str | Path | None) -> dict:
    """Read a JSON object file; a missing file gives ``{}`` (optional inputs such as a base comparison)."""
    if not path or not Path(path).exists():
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AfinarError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}) — rerun the rule that writes it"
        ) from None
    return data if isinstance(data, dict) else {}


def event_kind(row: dict) -> str:
    """The event of a ``training_metrics.jsonl`` line (train_begin, log, evaluate, train_end).

    Taken from an explicit ``event``/``evento`` field when present, else inferred from the fields the
    seed writes for each event, so both layouts chart the same way.
    """
    for key in ("event", "evento", "tipo", "type"):
        if isinstance(row.get(key), str):
            return str(row[key])
    if "total_time_seconds" in row or "final_epoch" in row:
        return "train_end"
    if "num_epochs" in row or "grad_accum_steps" in row:
        return "train_begin"
    return "log"


def series(
    events: Iterable[dict], key: str, kinds: Sequence[str] = ("log",)
) -> tuple[list[float], list[float]]:
    """(steps, values) of one numeric field, one value per step (the last one logged wins).

    A resumed run logs the steps between its checkpoint and the kill a second time; keeping the last
    value per step draws the history the adapter actually has, without zig-zags.
    """
    by_step: dict[float, float] = {}
    for row in events:
        if event_kind(row) not in kinds:
            continue
        step, value = row.get("step"), row.get(key)
        if isinstance(step, int | float) and isinstance(value, int | float) and value == value:
            by_step[float(step)] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def moving_average(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing mean over up to ``window`` values (the seed's ``train_loss_avg_10`` when it is absent)."""
    out: list[float] = []
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


# ------------------------------------------------------------------------------------------ drawing


def _figure(
    width: float = 10, height: float = 5.5, nrows: int = 1, ncols: int = 1, **kw: Any
) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path, mode=0o644) as tmp:  # charts hold no text of the data: readable by the group
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _no_data(ax: Axes, message: str) -> None:
    """Turn an axis into a clearly worded 'no data' panel."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        wrap=True,
        fontsize=11,
        color="#555555",
        transform=ax.transAxes,
    )


def placeholder_chart(path: str | Path, title: str, message: str) -> Path:
    """Write an explanatory image in place of a chart that has no data (a declared output must exist)."""
    with matplotlib.rc_context(RC):
        fig, ax = _figure(9, 3.2)
        ax.set_title(title)
        _no_data(ax, message)
        return _save(fig, path)


def plot_loss(events: list[dict], path: str | Path, title: str = "Loss") -> Path:
    """Training loss per step, its moving average, validation loss and the best evaluation."""
    steps, loss = series(events, "train_loss")
    if not steps:
        steps, loss = series(events, "loss")
    avg_steps, avg = series(events, "train_loss_avg_10")
    if not avg_steps and len(loss) >= 2:
        avg_steps, avg = steps, moving_average(loss)
    eval_steps, eval_loss = series(events, "eval_loss", kinds=("log", "evaluate"))
    if not steps and not eval_steps:
        return placeholder_chart(
            path, title, "No loss was logged (training_metrics.jsonl is missing or empty)."
        )
    with matplotlib.rc_context(RC):
        fig, ax = _figure()
        if steps:
            ax.plot(steps, loss, color="#1f77b4", alpha=0.35, linewidth=1, label="train loss (per step)")
        if avg_steps:
            ax.plot(avg_steps, avg, color="#0b3d91", linewidth=2.2, label="train loss (moving avg, 10 steps)")
        if eval_steps:
            ax.plot(
                eval_steps,
                eval_loss,
                color="#d62728",
                marker="o",
                markersize=5,
                linewidth=1.8,
                label="validation loss",
            )
            best_i = min(range(len(eval_loss)), key=eval_loss.__getitem__)
            ax.scatter(
                [eval_steps[best_i]],
                [eval_loss[best_i]],
                marker="*",
                s=320,
                color="#ffbf00",
                edgecolor="black",
                linewidth=0.8,
                zorder=5,
                label=f"best validation: {eval_loss[best_i]:.4g} at step {eval_steps[best_i]:g}",
            )
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.legend(loc="best")
        return _save(fig, path)


def plot_metric(
    events: list[dict],
    key: str,
    path: str | Path,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "",
    log_scale: bool = False,
) -> Path:
    """One logged scalar (learning rate, grad norm) per optimizer step, with an optional reference line."""
    steps, values = series(events, key)
    if not steps:
        return placeholder_chart(path, title, f"No '{key}' was logged in training_metrics.jsonl.")
    with matplotlib.rc_context(RC):
        fig, ax = _figure(10, 4.5)
        ax.plot(steps, values, color="#1f77b4", linewidth=1.6, marker="." if len(steps) < 60 else None)
        if reference is not None and reference > 0:
            ax.axhline(reference, color="#d62728", linestyle="--", linewidth=1.2, label=reference_label)
            ax.legend(loc="upper right")
        if log_scale and min(values) > 0:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        return _save(fig, path)


def _gpu_indices(samples: list[dict]) -> list[int]:
    found: set[int] = set()
    for row in samples:
        for key in row:
            if key.startswith("gpu") and key.endswith("_reservada_gb") and key[3:].split("_")[0].isdigit():
                found.add(int(key[3:].split("_")[0]))
    return sorted(found)


def peak_gpu_gb(samples: list[dict]) -> float | None:
    """Peak GPU memory of a run in GB: the largest per-sample sum over GPUs of peak reserved memory.

    Peak *reserved* (not allocated) is what another job on the same card would be denied, so it is the
    number to plan with. ``None`` when no GPU was ever recorded (a CPU run).
    """
    gpus = _gpu_indices(samples)
    if not gpus:
        return None
    best = 0.0
    for row in samples:
        total = 0.0
        for i in gpus:
            value = row.get(f"gpu{i}_max_reservada_gb", row.get(f"gpu{i}_reservada_gb"))
            if isinstance(value, int | float):
                total += value
        best = max(best, total)
    return best


def _memory_panel(
    ax: Axes,
    t: list[float],
    lines: list[tuple[str, list[float | None], str]],
    total: float | None,
    ylabel: str,
) -> None:
    """Memory curves with their peaks in the legend; the capacity line only when it does not squash them.

    A 6 GB run on an 80 GB card drawn against an 80 GB line is a flat stripe at the bottom; the
    capacity is then named in the legend title instead.
    """
    peak = 0.0
    for label, vals, style in lines:
        present = [v for v in vals if v is not None]
        if not present:
            continue
        peak = max(peak, max(present))
        ax.plot(
            t,
            vals,
            linestyle=style,
            linewidth=1.8 if style == "-" else 1.3,
            label=f"{label} (peak {max(present):.2f} GB)",
        )
    legend_title = None
    top = peak
    if total:
        if peak >= 0.4 * total:
            ax.axhline(total, color="black", linewidth=1, linestyle=":", label=f"capacity {total:.1f} GB")
            top = max(top, total)
        else:
            legend_title = f"capacity {total:.1f} GB (off scale)"
    ax.set_ylim(0, max(top, 0.1) * 1.35)  # headroom so the legend never sits on the curves
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", ncol=2, title=legend_title, title_fontsize=8)


def plot_hardware(samples: list[dict], path: str | Path, title: str = "Hardware during training") -> Path:
    """GPU memory, RAM and CPU use over wall-clock time, one panel each, sharing the time axis."""
    timed = [r for r in samples if isinstance(r.get("timestamp"), int | float)]
    if not timed:
        return placeholder_chart(
            path, title, "No hardware samples (hardware_metrics.jsonl is missing or empty)."
        )
    timed.sort(key=lambda r: r["timestamp"])
    t0 = timed[0]["timestamp"]
    span_s = timed[-1]["timestamp"] - t0
    scale, unit = (60.0, "minutes") if span_s >= 180 else (1.0, "seconds")
    t = [(r["timestamp"] - t0) / scale for r in timed]

    def values(key: str) -> list[float | None]:
        return [r.get(key) if isinstance(r.get(key), int | float) else None for r in timed]

    with matplotlib.rc_context(RC):
        # A CPU run gets no empty GPU panel: an empty shared-x panel would also hide the time ticks.
        gpus = _gpu_indices(timed)
        if gpus:
            fig, (ax_gpu, ax_ram, ax_cpu) = _figure(10, 8.5, 3, 1, sharex=True)
            lines = []
            for i in gpus:
                lines.append((f"GPU {i} reserved", values(f"gpu{i}_reservada_gb"), "-"))
                lines.append((f"GPU {i} allocated", values(f"gpu{i}_alocada_gb"), "--"))
            total = next((r.get("gpu_total_gb") for r in timed if r.get("gpu_total_gb")), None)
            _memory_panel(ax_gpu, t, lines, total, "GPU memory (GB)")
            ax_gpu.set_title(title)
        else:
            fig, (ax_ram, ax_cpu) = _figure(10, 6.5, 2, 1, sharex=True)
            ax_ram.set_title(f"{title} (CPU run: no GPU memory recorded)")

        ram_lines = [
            ("RAM used (machine)", values("ram_usada_gb"), "-"),
            ("RAM used (training process)", values("ram_processo_gb"), "--"),
        ]
        if any(v is not None for _, vals, _ in ram_lines for v in vals):
            total = next((r.get("ram_total_gb") for r in timed if r.get("ram_total_gb")), None)
            _memory_panel(ax_ram, t, ram_lines, total, "RAM (GB)")
        else:
            _no_data(ax_ram, "No RAM samples recorded.")

        cpu = values("cpu_uso_%")
        if any(v is not None for v in cpu):
            ax_cpu.plot(t, cpu, color="#2ca02c", linewidth=1.6, label="CPU (machine)")
            proc = values("cpu_uso_processo_%")
            if any(v is not None for v in proc):
                ax_cpu.plot(
                    t,
                    proc,
                    color="#8c564b",
                    linewidth=1.2,
                    linestyle="--",
                    label="CPU (training process, 100% = 1 core)",
                )
            ax_cpu.set_ylabel("CPU use (%)")
            top = max([v for v in cpu + proc if v is not None] + [1.0])
            ax_cpu.set_ylim(0, top * 1.35)  # headroom so the legend never sits on the curves
            ax_cpu.legend(loc="upper left", ncol=2)
        else:
            _no_data(ax_cpu, "No CPU samples recorded.")
        ax_cpu.set_xlabel(f"time since training start ({unit})")
        return _save(fig, path)


# ------------------------------------------------------------------------------------------- tokens


@dataclass
class TokenCounter:
    """Counts tokens with the base model's tokenizer when it loads offline, else whitespace words.

    ``unit`` names what is counted, so every chart and table says whether the numbers are real model
    tokens (what ``max_seq_length`` limits) or an approximation.
    """

    unit: str
    exact: bool
    count_many: Callable[[list[str]], list[int]]
    count_chat: Callable[[list[dict]], int] | None = None


def _whitespace_counter() -> TokenCounter:
    return TokenCounter(
        unit="whitespace-separated words (no tokenizer available offline)",
        exact=False,
        count_many=lambda texts: [len(t.split()) for t in texts],
    )


def load_token_counter(model_base: str | None) -> TokenCounter:
    """A counter for ``modelo.base``'s tokenizer, loaded from a local folder or the local HF cache only.

    Never touches the network: a report must not fail (or hang on a cluster node) because a tokenizer
    is not cached. The fallback is announced in the unit string and in the log.
    """
    if not model_base:
        return _whitespace_counter()
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_base, local_files_only=True)
    except Exception as exc:  # any loading problem means "not available offline"
        log.info(
            "tokenizer of %s not loadable offline (%s); counting whitespace-separated words",
            model_base,
            type(exc).__name__,
        )
        return _whitespace_counter()

    def count_many(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    def count_chat(messages: list[dict]) -> int:
        ids = tok.apply_chat_template(messages, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    has_template = bool(getattr(tok, "chat_template", None))
    name = Path(model_base).name or model_base
    return TokenCounter(
        unit=f"tokens of the {name} tokenizer",
        exact=True,
        count_many=count_many,
        count_chat=count_chat if has_template else None,
    )


def _message_text(messages: Any, role: str) -> str:
    """Concatenated content of the messages with ``role`` (content may be typed parts)."""
    parts: list[str] = []
    for msg in list(messages) if messages is not None else []:
        if not isinstance(msg, dict) or msg.get("role") != role:
            continue
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif content is not None:
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _summary(values: list[int]) -> dict[str, float | int | None]:
    if not values:
        return {"min": None, "media": None, "mediana": None, "p95": None, "max": None, "total": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "min": ordered[0],
        "media": round(statistics.fmean(ordered), 1),
        "mediana": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
        "total": sum(ordered),
    }


@dataclass
class SplitTokens:
    """Token lengths of one split: per record prompt, answer and full chat (template applied)."""

    prompt: list[int] = field(default_factory=list)
    answer: list[int] = field(default_factory=list)
    chat: list[int] = field(default_factory=list)


def split_token_lengths(split_paths: dict[str, str | Path], counter: TokenCounter) -> dict[str, SplitTokens]:
    """Token lengths per split from the split parquets (``id``, ``messages``); missing splits are empty.

    The full-chat length uses the tokenizer's chat template when there is one, because that is what
    ``max_seq_length`` cuts; otherwise prompt + answer.
    """
    import pandas as pd

    out: dict[str, SplitTokens] = {}
    for split, path in split_paths.items():
        lengths = SplitTokens()
        if path and Path(path).exists():
            frame = pd.read_parquet(path, columns=["messages"])
            messages = [list(m) if m is not None else [] for m in frame["messages"]]
            lengths.prompt = counter.count_many([_message_text(m, "user") for m in messages])
            lengths.answer = counter.count_many([_message_text(m, "assistant") for m in messages])
            chat: list[int] = []
            failed = 0
            for i, msgs in enumerate(messages):
                total = lengths.prompt[i] + lengths.answer[i]
                if counter.count_chat is not None:
                    try:
                        total = counter.count_chat(
                            [{"role": m["role"], "content": m["content"]} for m in msgs]
                        )
                    except Exception:  # a template that rejects a record: count prompt + answer instead
                        failed += 1
                chat.append(total)
            if failed:
                log.warning(
                    "%s: the chat template could not render %d record(s); counted prompt + answer",
                    split,
                    failed,
                )
            lengths.chat = chat
        out[split] = lengths
    return out


def token_statistics(
    lengths: dict[str, SplitTokens], counter: TokenCounter, max_seq_length: int | None = None
) -> dict[str, Any]:
    """JSON-ready per-split statistics (count, min/mean/median/p95/max/total, over the limit)."""
    stats: dict[str, Any] = {
        "unidade": counter.unit,
        "exato": counter.exact,
        "max_seq_length": max_seq_length,
        "splits": {},
    }
    for split, lens in lengths.items():
        over = sum(1 for v in lens.chat if max_seq_length and v > max_seq_length) if counter.exact else None
        stats["splits"][split] = {
            "registros": len(lens.prompt),
            "prompt": _summary(lens.prompt),
            "resposta": _summary(lens.answer),
            "conversa": _summary(lens.chat),
            "acima_max_seq_length": over,
        }
    return stats


def plot_tokens(
    lengths: dict[str, SplitTokens], unit: str, path: str | Path, max_seq_length: int | None = None
) -> Path:
    """Histograms of prompt, answer and whole-conversation lengths, one colour per split."""
    title = "Length distribution per split"
    if not any(lens.prompt for lens in lengths.values()):
        return placeholder_chart(path, title, "No split records found to measure.")
    with matplotlib.rc_context(RC):
        fig, axes = _figure(10, 9, 3, 1)
        panels = (
            ("prompt", "Prompt (user message)"),
            ("answer", "Answer (assistant message)"),
            ("chat", "Whole conversation, chat template applied"),
        )
        for ax, (attr, label) in zip(axes, panels, strict=True):
            all_values = [v for lens in lengths.values() for v in getattr(lens, attr)]
            if not all_values:
                _no_data(ax, f"No {attr} lengths.")
                continue
            lo, hi = min(all_values), max(all_values)
            # one bin per integer length while that stays readable, else 40 equal bins
            bins: Any = [v - 0.5 for v in range(lo, hi + 2)] if hi - lo < 40 else 40
            pad = max(3.0, 0.04 * (hi - lo))
            ax.set_xlim(lo - pad, hi + pad)
            for split, lens in lengths.items():
                values = getattr(lens, attr)
                if values:
                    ax.hist(
                        values,
                        bins=bins,
                        histtype="stepfilled",
                        alpha=0.35,
                        color=SPLIT_COLORS.get(split),
                        edgecolor=SPLIT_COLORS.get(split),
                        linewidth=1.5,
                        label=f"{SPLIT_LABELS.get(split, split)} (n={len(values)}, "
                        f"median {statistics.median(values):g})",
                    )
            if attr == "chat" and max_seq_length and unit.startswith("tokens"):
                ax.axvline(
                    max_seq_length,
                    color="#d62728",
                    linestyle="--",
                    linewidth=1.4,
                    label=f"max_seq_length = {max_seq_length}",
                )
                if max_seq_length > hi * 1.5:  # keep the histogram readable: name the limit instead
                    ax.lines[-1].set_label(f"max_seq_length = {max_seq_length} (off scale, right)")
                else:
                    ax.set_xlim(right=max(hi + pad, max_seq_length * 1.03))
            if attr == "chat" and not unit.startswith("tokens"):
                label = "Whole conversation (prompt + answer; no tokenizer, so no template)"
            ax.set_title(label, fontsize=11, loc="left")
            ax.set_xlabel(f"length in {unit}")
            ax.set_ylabel("records")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(loc="upper right")
        fig.suptitle(title, fontsize=13, fontweight="bold")
        return _save(fig, path)


# ------------------------------------------------------------------------------------------- fields


def field_scores(metricas: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-field scores of the fine-tuned and (if evaluated) the base model from ``metricas.json``."""
    tuned = metricas.get("por_campo") or (metricas.get("modelo") or {}).get("por_campo") or {}
    base = (metricas.get("base") or {}).get("por_campo") or metricas.get("por_campo_base") or {}
    return dict(tuned), dict(base)


def _short(name: str, limit: int = 28) -> str:
    """A field name cut to ``limit`` characters, so long JSON keys do not eat the plot area."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_fields(metricas: dict, path: str | Path, json_task: bool = True, max_fields: int = 30) -> Path:
    """Horizontal F1 bars per JSON field, fine-tuned next to base when the base model was evaluated."""
    title = "F1 per JSON field (test split)"
    tuned, base = field_scores(metricas)
    if not tuned:
        reason = (
            "Per-field scores apply to JSON answers (formatos.formato_saida: json); this task's answers are text."
            if not json_task
            else "No per-field scores in avaliacao/metricas.json (no valid JSON fields were found to score)."
        )
        return placeholder_chart(path, title, reason)
    names = sorted(tuned, key=lambda f: (-(tuned[f].get("suporte") or 0), f))[:max_fields]
    names.reverse()  # largest support at the top of a horizontal bar chart
    height = max(3.0, 0.42 * len(names) * (1.6 if base else 1) + 1.6)
    with matplotlib.rc_context(RC):
        fig, ax = _figure(10, min(height, 16))
        ys = list(range(len(names)))
        bar = 0.4 if base else 0.7
        tuned_f1 = [float(tuned[n].get("f1") or 0.0) for n in names]
        offs = bar / 2 if base else 0.0
        bars = ax.barh(
            [y + offs for y in ys], tuned_f1, height=bar, color=FINETUNED_COLOR, label="fine-tuned"
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in tuned_f1], padding=3, fontsize=8)
        if base:
            base_f1 = [float((base.get(n) or {}).get("f1") or 0.0) for n in names]
            bars_b = ax.barh(
                [y - offs for y in ys], base_f1, height=bar, color=BASE_COLOR, label="base model"
            )
            ax.bar_label(bars_b, labels=[f"{v:.2f}" for v in base_f1], padding=3, fontsize=8, color="#555555")
        ax.set_yticks(ys, [f"{_short(n)}  (n={tuned[n].get('suporte', '?')})" for n in names])
        ax.set_xlim(0, 1.12)
        ax.set_xlabel("F1 (0–1; key present and value equal after normalisation)")
        ax.set_title(title + (f" — top {max_fields} by support" if len(tuned) > max_fields else ""))
        ax.grid(axis="y", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return _save(fig, path)


# ---------------------------------------------------------------------------------------- all charts


def clear_old_charts(folder: str | Path) -> list[Path]:
    """Delete every ``grafico_*.png`` in ``folder`` (the seed's pending item: no stale charts remain)."""
    removed = []
    for old in sorted(Path(folder).glob("grafico_*.png")):
        old.unlink()
        removed.append(old)
    if removed:
        log.info("removed %d old chart(s) in %s", len(removed), folder)
    return removed


def make_charts(
    out_dir: str | Path,
    training_metrics: str | Path | None,
    hardware_metrics: str | Path | None,
    split_paths: dict[str, str | Path],
    metricas: str | Path | None,
    model_base: str | None,
    max_seq_length: int | None = None,
    max_grad_norm: float | None = None,
    json_task: bool = True,
    token_stats_path: str | Path | None = None,
    exp: str = "",
) -> dict[str, Path]:
    """Draw every chart of one experiment into ``out_dir``; returns name → path for ``CHART_NAMES``.

    Also writes the token statistics (``token_stats_path``) the report shows, so the data is tokenized
    once per experiment.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_old_charts(out)
    events = read_jsonl_lenient(training_metrics)
    samples = read_jsonl_lenient(hardware_metrics)
    prefix = f"{exp}: " if exp else ""
    written = {
        "grafico_loss.png": plot_loss(
            events, out / "grafico_loss.png", f"{prefix}training and validation loss"
        ),
        "grafico_learning_rate.png": plot_metric(
            events,
            "learning_rate",
            out / "grafico_learning_rate.png",
            f"{prefix}learning rate schedule",
            "learning rate (per optimizer step)",
        ),
        "grafico_grad_norm.png": plot_metric(
            events,
            "grad_norm",
            out / "grafico_grad_norm.png",
            f"{prefix}gradient norm (before clipping)",
            "global L2 norm of gradients",
            reference=max_grad_norm,
            reference_label=f"clipping threshold max_grad_norm = {max_grad_norm}",
        ),
        "grafico_hardware.png": plot_hardware(
            samples, out / "grafico_hardware.png", f"{prefix}hardware during training"
        ),
    }
    counter = load_token_counter(model_base)
    lengths = split_token_lengths(split_paths, counter)
    written["grafico_tokens.png"] = plot_tokens(
        lengths, counter.unit, out / "grafico_tokens.png", max_seq_length
    )
    if token_stats_path:
        atomic_write_json(token_stats_path, token_statistics(lengths, counter, max_seq_length))
    written["grafico_campos.png"] = plot_fields(
        read_json_lenient(metricas), out / "grafico_campos.png", json_task
    )
    return written
