"""Metric files of a training run: seed fields, one stream line per log (B18), appended on resume (B2)."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from afinar.io import read_jsonl
from afinar.monitor import BackgroundSampler
from afinar.train.callbacks import MetricsCallback


def run_events(cb, args, state, losses, evals):
    control = TrainerControl()
    cb.on_train_begin(args, state, control)
    for i, loss in enumerate(losses, start=state.global_step + 1):
        state.global_step, state.epoch = i, i / state.max_steps
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs={"loss": loss, "learning_rate": 1e-3, "grad_norm": 0.5})
        state.log_history.append({"loss": loss, "step": i})
        if i in evals:
            metrics = {"eval_loss": evals[i], "eval_runtime": 0.1}
            cb.on_log(args, state, control, logs=dict(metrics))  # the Trainer logs the eval metrics once...
            cb.on_evaluate(args, state, control, metrics=metrics)  # ...and then calls on_evaluate
            state.log_history.append({"eval_loss": evals[i], "step": i})
    cb.on_train_end(args, state, control)


def test_metric_files_fields_and_resume_append(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=2, report_to="none")
    stream, training, hw = (
        tmp_path / "metrics_stream.jsonl",
        tmp_path / "t" / "training_metrics.jsonl",
        tmp_path / "hw.jsonl",
    )
    shared: dict = {}
    state = TrainerState(max_steps=20)
    with BackgroundSampler(hw, interval_s=60, extra=lambda: dict(shared)) as sampler:
        cb = MetricsCallback(stream, training, shared, sampler)
        run_events(cb, args, state, [5.0 - 0.1 * i for i in range(12)], {6: 3.0, 12: 3.5})

    rows = read_jsonl(training)
    assert [r["event"] for r in rows][:2] == ["train_begin", "log"]
    assert rows[0]["total_steps"] == 20 and rows[0]["resumed"] is False and rows[0]["batch_size"] == 2
    logs = [r for r in rows if r["event"] == "log" and "train_loss" in r]
    assert len(logs) == 12 and "train_loss_avg_10" not in logs[8] and "train_loss_avg_10" in logs[9]
    assert logs[9]["train_loss_avg_10"] == round(sum(5.0 - 0.1 * i for i in range(10)) / 10, 6)
    assert logs[-1]["progress_%"] == 60.0 and logs[0]["grad_norm"] == 0.5
    eval_logs = [r for r in rows if r["event"] == "log" and "eval_loss" in r]
    assert eval_logs[0]["is_best_eval"] is True and "is_best_eval" not in eval_logs[1]
    assert [r["eval_loss"] for r in rows if r["event"] == "evaluate"] == [3.0, 3.5]
    end = rows[-1]
    assert end["event"] == "train_end" and end["best_eval_loss"] == 3.0 and end["total_steps"] == 12

    lines = read_jsonl(stream)
    assert sum("eval_loss" in r for r in lines) == 2  # each evaluation once (B18)
    assert all({"step", "epoch", "time"} <= r.keys() for r in lines)

    samples = read_jsonl(hw)
    assert [s["fase"] for s in samples] == ["train_begin", "eval", "eval", "train_end"]
    assert samples[1]["step"] == 6 and "ram_usada_gb" in samples[0] and "cpu_uso_%" in samples[0]

    # a resumed run (restored state with history) appends and keeps the best eval
    cb2 = MetricsCallback(stream, training, shared)
    run_events(cb2, args, state, [3.0, 2.9], {14: 3.2})
    rows2 = read_jsonl(training)
    assert rows2[: len(rows)] == rows
    begin = rows2[len(rows)]
    assert begin["event"] == "train_begin" and begin["resumed"] is True and begin["step"] == 12
    new_eval = [r for r in rows2[len(rows) :] if r["event"] == "log" and "eval_loss" in r][0]
    assert "is_best_eval" not in new_eval  # 3.2 is worse than the 3.0 before the resume
    assert len(read_jsonl(stream)) == len(lines) + 3
