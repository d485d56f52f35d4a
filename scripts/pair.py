"""Rule `pair`: raw input files (or the input dataframe) + expected answers → results/data/pairs.parquet."""

from afinar.data.pairing import run_pair
from afinar.errors import run_rule


def main(smk) -> None:
    p = smk.params
    run_pair(p.entrada, p.predicao, p.validacao, p.formatos, smk.output.pairs, smk.output.summary)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
