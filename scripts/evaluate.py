"""Rule `evaluate`: predictions → results/{exp}/avaliacao/metricas.json + por_registro.csv (see afinar.evaluate.evaluation)."""

from afinar.errors import run_rule


def main(smk) -> None:
    from afinar.evaluate.evaluation import run_evaluation

    run_evaluation(
        smk.input.predicoes,
        smk.input.get("base"),
        smk.output.metricas,
        smk.output.por_registro,
        formato_saida=smk.params.formato_saida,
        campos=smk.params.avaliacao.get("campos") or None,
    )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
