"""The Markdown report: real numbers from the inputs, charts linked, text shown only when allowed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import _report_fixtures as F
import pytest

from afinar.report import charts
from afinar.report import markdown as report

EXP_CONFIG = {
    "modelo": {"base": "org/some-base", "saida": "results/exp1"},
    "treinamento": {"epochs": 2, "max_seq_length": 64, "learning_rate": 0.0002},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    "predicao": {"batch_size": 16, "max_new_tokens": 512},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A whole experiment's files, charts included (drawn once for the module: they cost seconds)."""
    root = tmp_path_factory.mktemp("exp")
    data = F.write_data(root)
    exp = root / "results" / "exp1"
    paths = {**data, **F.write_training(exp), **F.write_evaluation(exp, data["teste"]), "exp": exp}
    out = exp / "treinamento"
    paths["token_stats"] = out / "estatisticas_tokens.json"
    charts.make_charts(
        out,
        paths["training"],
        paths["hardware"],
        {s: data[s] for s in charts.SPLITS},
        paths["metricas"],
        model_base="",
        max_seq_length=64,
        token_stats_path=paths["token_stats"],
    )
    return paths


def inputs(run: dict[str, Path], **overrides) -> report.ReportInputs:
    base = dict(
        metricas=run["metricas"],
        predicoes=run["predicoes"],
        por_registro=run["por_registro"],
        training_metrics=run["training"],
        hardware_metrics=run["hardware"],
        metrics_summary=run["summary"],
        pareamento=run["pareamento"],
        divisao=run["divisao"],
        token_stats=run["token_stats"],
        charts=[run["exp"] / "treinamento" / n for n in charts.CHART_NAMES],
    )
    base.update(overrides)
    return report.ReportInputs(**base)


def write(run: dict[str, Path], tmp_path: Path, misc: dict, relatorio: dict, **overrides) -> tuple[Path, str]:
    out = run["exp"] / "relatorio.md"
    report.write_report(
        out,
        "exp1",
        EXP_CONFIG,
        inputs(run, **overrides),
        misc=misc,
        relatorio=relatorio,
        data_config={"formatos": {"tipo_entrada": "pastas", "formato_saida": "json"}},
    )
    return out, out.read_text(encoding="utf-8")


PLAIN = {"log_level": "INFO", "env_chave_criptografia": ""}
ENCRYPTED = {"log_level": "INFO", "env_chave_criptografia": "CHAVE_CRIPT"}


def test_report_shows_the_real_numbers_of_its_inputs(run: dict[str, Path], tmp_path: Path) -> None:
    _, text = write(run, tmp_path, PLAIN, {"mostrar_exemplos": None, "n_exemplos": 3})
    metricas = json.loads(run["metricas"].read_text())
    micro, base = metricas["modelo"]["campos_micro_f1"], metricas["base"]["campos_micro_f1"]
    assert f"**{micro:.3f}**" in text and f"gain **{micro - base:+.3f}**" in text
    assert f"| Exact match | {metricas['modelo']['exact_match']:.3f} | 0.000 |" in text
    assert "| `cidade` |" in text
    tokens = json.loads(run["token_stats"].read_text())["splits"]["treino"]
    assert tokens["prompt"]["total"] > 0  # the original's token statistics were always zero (B11)
    assert f"| train | 28 | {tokens['prompt']['media']:.1f} | {tokens['prompt']['max']} |" in text
    assert "whitespace-separated words" in text  # no tokenizer: the unit says so
    summary = json.loads(run["summary"].read_text())
    assert "| effective batch | 16 = 4 per device × 2 accumulation × 2 process(es) (ddp) |" in text
    assert "1,081,344 of 495,114,112" in text and report.format_duration(summary["train_runtime"]) in text
    assert "GPU: NVIDIA H100 80GB HBM3" in text and "6.20 GB of 79.6 GB" in text
    assert "| train | 28 | 0.70 | 0.667 |" in text  # configured vs effective proportions
    assert "2 input file(s) without an answer" in text and "`z9`" in text
    assert "lora:\n  r: 8\n  alpha: 16" in text  # configuration as YAML
    for name in charts.CHART_NAMES:  # relative links that resolve from the report's folder
        assert f"](treinamento/{name})" in text
        assert (run["exp"] / "treinamento" / name).exists()


def test_examples_with_text_when_the_source_is_not_encrypted(run: dict[str, Path], tmp_path: Path) -> None:
    out, text = write(run, tmp_path, PLAIN, {"mostrar_exemplos": None, "n_exemplos": 2})
    assert text.count("### Example `") == 2
    assert F.SECRET_WORD in text and "**Generated**" in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_encrypted_source_hides_all_text(run: dict[str, Path], tmp_path: Path) -> None:
    out, text = write(run, tmp_path, ENCRYPTED, {"mostrar_exemplos": None, "n_exemplos": 3})
    assert text.count("### Example `") == 3
    assert F.SECRET_WORD not in text and "**Prompt**" not in text
    assert "text of examples is not shown" in text and "characters" in text
    for pred in (json.loads(line) for line in run["predicoes"].read_text().splitlines()):
        assert pred["esperado"] not in text


def test_mostrar_exemplos_true_shows_encrypted_text_in_a_private_file(
    run: dict[str, Path], tmp_path: Path
) -> None:
    out, text = write(run, tmp_path, ENCRYPTED, {"mostrar_exemplos": True, "n_exemplos": 1})
    assert F.SECRET_WORD in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_missing_optional_inputs_are_stated_not_fatal(run: dict[str, Path], tmp_path: Path) -> None:
    _, text = write(
        run,
        tmp_path,
        PLAIN,
        {"n_exemplos": 3},
        por_registro=None,
        pareamento=None,
        hardware_metrics=None,
        metrics_summary=None,
        token_stats=None,
        charts=[],
    )
    assert (
        "No pairing step" in text
        and "No hardware samples" in text
        and "Token statistics not available" in text
    )
    assert "## 7. Examples" in text and text.count("### Example `") == 3
    assert "| training time | 1m 35s |" in text  # from train_end of training_metrics.jsonl


def test_examples_spread_from_best_to_worst() -> None:
    preds = [{"id": f"r{i}"} for i in range(5)]
    scores = {f"r{i}": {"rouge_l_f1": s} for i, s in enumerate([0.5, 0.9, 0.1, 0.7, 0.3])}
    assert [p["id"] for p in report.pick_examples(preds, scores, 3)] == ["r1", "r0", "r2"]
    assert [p["id"] for p in report.pick_examples(preds, {}, 2)] == ["r0", "r1"]
    assert report.pick_examples(preds, scores, 0) == []


def test_text_helpers() -> None:
    assert report.fence("a ```json b```") == "````\na ```json b```\n````"
    assert report.format_duration(3725) == "1h 02m 05s" and report.format_duration(None) == "—"
    assert report.signed(0.25) == "+0.250" and report.signed(None) == "—"
    clipped = report.clip("x" * 5000)
    assert len(clipped) < 1000 and "4,100 characters omitted" in clipped
    assert report.show_examples(ENCRYPTED, {"mostrar_exemplos": None}) is False
    assert report.show_examples(PLAIN, {"mostrar_exemplos": False}) is False


def test_data_section_shows_the_token_filter_and_the_hf_dataset(run: dict[str, Path], tmp_path: Path) -> None:
    filtro = tmp_path / "filtro.json"
    dropped = [f"doc{i:03d}" for i in range(12)]
    filtro.write_text(
        json.dumps(
            {
                "max_tokens": 512,
                "acao": "descartar",
                "aplicado_em": ["treino", "validacao"],
                "splits": {
                    "treino": {"total": 28, "mantidos": 16, "descartados": dropped, "truncados": []},
                    "validacao": {"total": 6, "mantidos": 6, "descartados": [], "truncados": []},
                    "teste": {"total": 8, "mantidos": 7, "descartados": ["doc040"], "truncados": []},
                },
            }
        )
    )
    divisao = json.loads(run["divisao"].read_text())
    divisao["hf_dataset"] = {
        "nome": "org/dados",
        "config": "default",
        "revisao_pedida": "v1.0",
        "revisao_resolvida": "abc123",
        "versao": "0.0.0",
        "carregado_com": "load_dataset",
        "fingerprints": {"train": "f00d"},
        "usados": {"treino": "train"},
    }
    hf_divisao = tmp_path / "divisao.json"
    hf_divisao.write_text(json.dumps(divisao))
    _, text = write(
        run,
        tmp_path,
        PLAIN,
        {"mostrar_exemplos": None, "n_exemplos": 0},
        filtro_tokens=filtro,
        divisao=hf_divisao,
    )
    assert "longer than 512 tokens" in text
    row = next(line for line in text.splitlines() if line.startswith("| train | 28 | 16 | 12 | 0 |"))
    assert "`doc009`" in row and "`doc010`" not in row and row.endswith("… |  |")  # first 10 ids
    assert "| test (not filtered) | 8 | 7 | 1 | 0 | `doc040` |" in text
    assert "**Hugging Face dataset** `org/dados`, config `default`" in text
    assert "requested: `v1.0`; resolved: `abc123`" in text and "treino ← `train` (fingerprint `f00d`)" in text
    # without the file the section is simply absent
    _, text = write(run, tmp_path, PLAIN, {"mostrar_exemplos": None, "n_exemplos": 0})
    assert "Token filter" not in text and "Hugging Face dataset" not in text


def test_trainable_parameters_come_from_what_training_writes(
    run: dict[str, Path], tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Issue 13 item 9: training writes modelo_info {treinaveis, total, percentual}; the report and the
    comparison read exactly those keys (they used to read trainable_params and printed "—")."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from afinar.report import compare
    from afinar.train.training import count_parameters

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    info = count_parameters(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert info["treinaveis"] == lora > 0 and info["total"] == sum(p.numel() for p in model.parameters())
    summary = json.loads(run["summary"].read_text())
    summary["modelo_info"] = info
    path = tmp_path / "metrics_summary.json"
    path.write_text(json.dumps(summary))
    _, text = write(run, tmp_path, PLAIN, {"n_exemplos": 0}, metrics_summary=path)
    assert (
        f"| trainable parameters | {info['treinaveis']:,} of {info['total']:,} ({info['percentual']:.3f} %) |"
        in text
    )
    result = compare.collect(
        compare.ExperimentFiles(name="exp1", metricas=run["metricas"], metrics_summary=path)
    )
    assert result.trainable_params == info["treinaveis"]


def test_evaluation_names_every_row_and_keeps_speed_apart(run: dict[str, Path], tmp_path: Path) -> None:
    """Issue 13 item 10: metricas.json as the evaluate rule really writes it → every row has a name;
    counts and speed sit in their own table, without a "gain"."""
    from afinar.evaluate.evaluation import evaluate

    def pred(rid: str, gerado: str, **kw: object) -> dict:
        esperado = json.dumps({"nome": "Ana", "cidade": "Recife"})
        return {
            "id": rid,
            "esperado": esperado,
            "gerado": gerado,
            "tokens_prompt": 20,
            "tokens_saida": 9,
            "segundos": 0.5,
            **kw,
        }

    good = json.dumps({"nome": "Ana", "cidade": "Recife"})
    model = [pred("a", good), pred("b", good, limite_atingido=True), pred("c", "", truncado=True)]
    base = [pred("a", "texto"), pred("b", good), pred("c", "nada", segundos=0.001)]
    metricas, _ = evaluate(model, base, "json")
    path = tmp_path / "metricas.json"
    path.write_text(json.dumps(metricas))
    _, text = write(run, tmp_path, PLAIN, {"n_exemplos": 0}, metricas=path)
    section = text[text.index("## 5. Evaluation") : text.index("## 6. Charts")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| `")]
    labels = [
        line.split("|")[1].strip() for line in rows if "fine-tuned" not in line and "| field |" not in line
    ]
    assert len(labels) == len([k for k, v in metricas["modelo"].items() if isinstance(v, int | float)])
    for key in metricas["modelo"]:
        assert key not in labels, f"raw key {key} shown as a row name"
    assert all(labels), labels
    quality, generation = section.split("Generation counts and speed")
    assert "tokens / second" not in quality and "Fields macro-precision" in quality
    assert "| answers that hit max_new_tokens | 1 | 0 |" in generation
    assert "| prompts cut to fit max_seq_length | 1 | 0 |" in generation
    assert "gain" not in generation.split("\n\n", 2)[1] and "+" not in generation


def test_html_page_shows_the_report_with_its_charts_inline(run: dict[str, Path], tmp_path: Path) -> None:
    """Issue 13 item 11: snakemake --report only shows HTML, so the report is also one self-contained page."""
    import base64

    out = run["exp"] / "relatorio.md"
    page = run["exp"] / "relatorio.html"
    report.write_report(
        out,
        "exp1",
        EXP_CONFIG,
        inputs(run),
        misc=ENCRYPTED,
        relatorio={"mostrar_exemplos": True, "n_exemplos": 1},
        html_path=page,
    )
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<h1>Fine-tuning report: exp1</h1>" in html
    assert html.count("<table>") >= 5 and "<td>Exact match</td>" in html
    loss = (run["exp"] / "treinamento" / "grafico_loss.png").read_bytes()
    assert f"data:image/png;base64,{base64.b64encode(loss).decode()}" in html
    assert 'src="treinamento/' not in html  # nothing points outside the page
    assert F.SECRET_WORD in html and stat.S_IMODE(page.stat().st_mode) == 0o600  # same privacy as the .md
