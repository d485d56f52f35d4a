"""Charts drawn from realistic metric files: every declared chart exists, is a real PNG, old ones go."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import _report_fixtures as F
import pytest

from afinar.report import charts


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails the test if the file is not a PNG."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Path]:
    data = F.write_data(tmp_path)
    exp = tmp_path / "results" / "exp1"
    paths = {**data, **F.write_training(exp), **F.write_evaluation(exp, data["teste"]), "exp": exp}
    return paths


def test_make_charts_writes_every_chart_and_removes_stale_ones(run: dict[str, Path]) -> None:
    out = run["exp"] / "treinamento"
    (out / "grafico_antigo.png").write_bytes(b"stale")
    (out / "memoria_predicao.png").write_bytes(b"not ours")
    stats = out / "estatisticas_tokens.json"
    written = charts.make_charts(
        out,
        run["training"],
        run["hardware"],
        {s: run[s] for s in charts.SPLITS},
        run["metricas"],
        model_base="",
        max_seq_length=64,
        max_grad_norm=1.0,
        token_stats_path=stats,
        exp="exp1",
    )
    assert sorted(written) == sorted(charts.CHART_NAMES)
    assert sorted(p.name for p in out.glob("grafico_*.png")) == sorted(charts.CHART_NAMES)
    assert (out / "memoria_predicao.png").read_bytes() == b"not ours"
    for name in charts.CHART_NAMES:
        width, height = png_size(out / name)
        assert 800 <= width <= 2000 and 300 <= height <= 2000, (name, width, height)
        assert (out / name).stat().st_size > 15_000, f"{name} looks empty"
    token_stats = json.loads(stats.read_text())
    assert not token_stats["exato"] and "words" in token_stats["unidade"]
    assert token_stats["splits"]["treino"]["registros"] == 28
    assert (
        token_stats["splits"]["teste"]["resposta"]["min"] == 7
    )  # {"nome": "A B", "idade": N, "cidade": "C"}


def test_missing_inputs_give_explanatory_images_not_crashes(tmp_path: Path) -> None:
    out = tmp_path / "treinamento"
    written = charts.make_charts(
        out, None, tmp_path / "absent.jsonl", {}, None, model_base="", json_task=False
    )
    for name in charts.CHART_NAMES:
        assert png_size(written[name])[0] > 0
    # placeholders are smaller images than real charts, but still readable ones
    assert all(written[n].stat().st_size > 5_000 for n in charts.CHART_NAMES)


def test_series_keeps_the_last_value_of_a_step_logged_twice_by_a_resume() -> None:
    events = [
        {"event": "log", "step": 1, "train_loss": 3.0},
        {"event": "log", "step": 2, "train_loss": 2.5},
        {"event": "log", "step": 2, "train_loss": 2.4},  # logged again after resuming from step 1
        {"event": "log", "step": 3, "train_loss": 2.0, "eval_loss": 2.2},
        {"event": "evaluate", "step": 4, "eval_loss": 2.1},
        {"event": "train_end", "total_time_seconds": 9},
    ]
    assert charts.series(events, "train_loss") == ([1.0, 2.0, 3.0], [3.0, 2.4, 2.0])
    assert charts.series(events, "eval_loss", kinds=("log", "evaluate")) == ([3.0, 4.0], [2.2, 2.1])
    assert charts.moving_average([1, 2, 3, 4], window=2) == [1, 1.5, 2.5, 3.5]


def test_broken_metric_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "train_loss": 2}\n{"step": 2, "train_lo')
    assert charts.read_jsonl_lenient(path) == [{"step": 1, "train_loss": 2}]


def test_peak_gpu_sums_the_gpus_of_one_sample() -> None:
    samples = [
        {
            "gpu0_max_reservada_gb": 3.0,
            "gpu0_reservada_gb": 1.0,
            "gpu1_max_reservada_gb": 2.0,
            "gpu1_reservada_gb": 1,
        },
        {
            "gpu0_max_reservada_gb": 4.0,
            "gpu0_reservada_gb": 1.0,
            "gpu1_max_reservada_gb": 2.5,
            "gpu1_reservada_gb": 1,
        },
    ]
    assert charts.peak_gpu_gb(samples) == 6.5
    assert charts.peak_gpu_gb([{"ram_usada_gb": 3}]) is None


def test_token_counts_use_the_local_tokenizer_and_fall_back_offline(
    run: dict[str, Path], tmp_path: Path
) -> None:
    tok_dir = F.write_tokenizer(tmp_path / "tok", F.corpus_of(run))
    counter = charts.load_token_counter(str(tok_dir))
    assert counter.exact and counter.unit == "tokens of the tok tokenizer"
    lengths = charts.split_token_lengths({"teste": run["teste"]}, counter)["teste"]
    # the word-level tokenizer splits on whitespace and punctuation: more tokens than words
    words = charts.split_token_lengths({"teste": run["teste"]}, charts._whitespace_counter())["teste"]
    assert len(lengths.prompt) == 8 and all(t > w for t, w in zip(lengths.prompt, words.prompt, strict=True))
    # the chat template adds its markers around both messages
    assert all(c > p + a for c, p, a in zip(lengths.chat, lengths.prompt, lengths.answer, strict=True))
    stats = charts.token_statistics({"teste": lengths}, counter, max_seq_length=min(lengths.chat))
    assert stats["splits"]["teste"]["acima_max_seq_length"] == sum(
        1 for c in lengths.chat if c > min(lengths.chat)
    )

    offline = charts.load_token_counter("no-such-org/no-such-model-afinar-test")
    assert not offline.exact and "words" in offline.unit
