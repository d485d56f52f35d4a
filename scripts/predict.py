"""Rules `predict` / `predict_base`: test split → results/{exp}/predicoes/teste(_base).jsonl (see afinar.predict.generation).

`predict` uses the trained adapter (input `adapter`) and records memory use during prediction;
`predict_base` has no adapter input and predicts with the base model, for the base-vs-tuned comparison.
"""

from afinar.errors import run_rule


def main(smk) -> None:
    # Choose this job's GPU before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES only once.
    from afinar.gpu_slots import claim_gpu

    slot = claim_gpu(timeout_s=600)
    from afinar.predict.generation import GenerationSettings, run_prediction

    p = smk.params
    treinamento = p.treinamento
    settings = GenerationSettings.from_config(
        p.predicao, treinamento["max_seq_length"], seed=treinamento["seed"]
    )
    adapter = smk.input.get("adapter")
    memory = smk.output.get("memoria")
    chart = smk.output.get("grafico")
    with slot:
        run_prediction(
            smk.input.teste,
            smk.output.predicoes,
            p.modelo["base"],
            adapter,
            settings,
            backend=treinamento["backend"],
            nbits=int(treinamento["nbits"] or 0),
            memory_jsonl=memory,
            memory_png=chart,
            precisao=treinamento.get("precisao", "auto"),
        )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
