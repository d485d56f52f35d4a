"""Rule `pair`: raw input files (or the input dataframe) + expected answers → results/data/pairs.parquet."""

from afinar.config import experiments, load_config
from afinar.data.pairing import run_pair
from afinar.errors import run_rule


def main(smk) -> None:
    p = smk.params
    # Read from the run's config, not params: a new max_seq_length must not rerun pair (it only warns).
    longest = max(
        int(e["treinamento"]["max_seq_length"]) for e in experiments(load_config(smk.config)).values()
    )
    run_pair(p.entrada, p.predicao, p.validacao, p.formatos, smk.output.pairs, smk.output.summary, longest)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
