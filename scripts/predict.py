"""Rules `predict` / `predict_base`: test split → results/{exp}/predicoes/teste(_base).jsonl (see afinar.predict.generation).

`predict` uses the trained adapter (input `adapter`) and records memory use during prediction; with
`predicao.comparar_base` it also predicts with the base model first, in the same process, for
`predict_base` (afinar.predict.base_cache). `predict_base` copies those predictions when they match, and
predicts with the base model itself otherwise.
"""

from afinar.errors import run_rule


def main(smk) -> None:
    # Choose this job's GPU before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES only once.
    from afinar.gpu_slots import claim_gpu

    slot = claim_gpu(timeout_s=600)
    from pathlib import Path

    from afinar.predict.base_cache import cache_file, cache_key
    from afinar.predict.generation import GenerationSettings, run_config_predicao, run_prediction

    p = smk.params
    treinamento = p.treinamento
    # speed settings and comparar_base come from the run's config, not params: they never rerun a job
    live = run_config_predicao(smk.config, smk.wildcards.exp)
    settings = GenerationSettings.from_config(
        {**p.predicao, "batch_size": live["batch_size"]},
        treinamento["max_seq_length"],
        seed=treinamento["seed"],
    )
    adapter = smk.input.get("adapter")
    key = cache_key(smk.input.teste, p.modelo["base"], {"predicao": p.predicao, "treinamento": treinamento})
    kept = cache_file(Path(smk.output.predicoes).parent, key)
    with slot:
        run_prediction(
            smk.input.teste,
            smk.output.predicoes,
            p.modelo["base"],
            adapter,
            settings,
            backend=treinamento["backend"],
            nbits=int(treinamento["nbits"] or 0),
            memory_jsonl=smk.output.get("memoria"),
            memory_png=smk.output.get("grafico"),
            base_cache=kept if (adapter is None or live["comparar_base"]) else None,
            precisao=treinamento.get("precisao", "auto"),
        )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
