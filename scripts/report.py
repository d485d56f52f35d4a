"""Rule report: render results/{exp}/relatorio.md (and relatorio.html) from the experiment's files and config."""

from afinar.errors import run_rule
from afinar.report.markdown import ReportInputs, write_report


def main(smk) -> None:
    inputs = ReportInputs(
        metricas=smk.input.metricas,
        predicoes=smk.input.predicoes,
        por_registro=smk.input.por_registro,
        training_metrics=smk.input.training,
        hardware_metrics=smk.input.hardware,
        metrics_summary=smk.input.summary,
        pareamento=smk.input.get("pareamento"),
        divisao=smk.input.get("divisao"),
        token_stats=smk.input.token_stats,
        filtro_tokens=smk.input.get("filtro_tokens"),
        charts=list(smk.input.charts),
    )
    write_report(
        smk.output.md,
        exp=smk.wildcards.exp,
        exp_config=dict(smk.params.experimento),
        inputs=inputs,
        misc=dict(smk.params.misc),
        relatorio=dict(smk.params.relatorio),
        data_config=dict(smk.params.dados),
        html_path=smk.output.html,
    )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
