"""Rule `filter_tokens`: split parquets + base tokenizer → results/data/filtro_tokens/{exp}.json (see afinar.train.token_filter)."""

from afinar.errors import run_rule


def main(smk) -> None:
    from afinar.train.token_filter import run_filter

    p = smk.params
    run_filter(
        {name: smk.input[name] for name in ("treino", "validacao", "teste")},
        smk.output[0],
        p.base,
        int(p.max_seq_length),
        dict(p.filtro_tokens or {}),
    )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
