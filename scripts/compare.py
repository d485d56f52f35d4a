"""Rule compare: rank every experiment of the config in results/comparacao.md and results/comparacao.png."""

from afinar.errors import run_rule
from afinar.report.compare import ExperimentFiles, write_comparison


def main(smk) -> None:
    configs = dict(smk.params.experimentos)
    files = [
        ExperimentFiles(name, metricas, summary, hardware, training, dict(configs[name]))
        for name, metricas, summary, hardware, training in zip(
            configs,
            smk.input.metricas,
            smk.input.summary,
            smk.input.hardware,
            smk.input.training,
            strict=True,
        )
    ]
    write_comparison(files, smk.output.md, smk.output.png)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
