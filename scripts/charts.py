"""Rule charts: draw results/{exp}/treinamento/grafico_*.png and the token statistics of the splits."""

from pathlib import Path

from afinar.errors import AfinarError, run_rule
from afinar.report.charts import CHART_NAMES, make_charts


def main(smk) -> None:
    out_dir = Path(smk.output.loss).parent
    written = make_charts(
        out_dir,
        training_metrics=smk.input.training,
        hardware_metrics=smk.input.hardware,
        split_paths={"treino": smk.input.treino, "validacao": smk.input.validacao, "teste": smk.input.teste},
        metricas=smk.input.metricas,
        model_base=smk.params.base,
        max_seq_length=smk.params.max_seq_length,
        max_grad_norm=smk.params.max_grad_norm,
        json_task=smk.params.formato_saida == "json",
        token_stats_path=smk.output.token_stats,
        exp=smk.wildcards.exp,
    )
    missing = [name for name in CHART_NAMES if not Path(written.get(name, out_dir / name)).exists()]
    if missing:
        raise AfinarError(f"{out_dir}: charts not written: {', '.join(missing)} — see the log above")


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
