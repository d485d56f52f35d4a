"""Rule `split`: plain pairs (pastas mode) or dataset files (dataset mode) → treino/validacao/teste parquets."""

from afinar.data.dataset_mode import run_dataset_split
from afinar.data.splits import SplitOutputs, run_split
from afinar.errors import run_rule


def main(smk) -> None:
    p, out = smk.params, smk.output
    outputs = SplitOutputs(out.treino, out.validacao, out.teste, out.divisao_csv, out.divisao_json)
    if p.tipo_entrada == "dataset":
        run_dataset_split(p.dataset, p.divisao, outputs)
    else:
        run_split(
            smk.input.pairs,
            outputs,
            p.divisao,
            p.prompt_template or None,
            p.tag_texto,
            summary_path=smk.input.summary,
            raw_pairs_path=smk.input.raw_pairs,
        )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
