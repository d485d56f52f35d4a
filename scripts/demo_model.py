"""Rule `demo_model`: the bundled example's text files → results/demo/modelo-base/ (tiny Qwen2, offline)."""

from afinar.errors import run_rule


def main(smk) -> None:
    from afinar.train.demo_model import build_tiny_model, demo_texts, read_corpus

    build_tiny_model(smk.output[0], demo_texts(read_corpus(list(smk.input))), seed=int(smk.params.seed))


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
