# Prediction and evaluation, per experiment:
#   predict       results/{exp}/adapter + teste.parquet → results/{exp}/predicoes/teste.jsonl
#                 (+ treinamento/memoria_predicao.jsonl/.png: RAM and GPU during prediction, the seed's files)
#   predict_base  teste.parquet (base model only)      → results/{exp}/predicoes/teste_base.jsonl
#                 (only pulled in by `predicao.comparar_base: true`; it does not depend on the adapter,
#                  so retraining never reruns it)
#   evaluate      predictions                          → results/{exp}/avaliacao/metricas.json + por_registro.csv
# Params carry exactly what each rule depends on, so that editing other keys never reruns it.


def predict_inputs(wildcards):
    """The test split and the trained adapter, plus the base model folder when this workflow builds it."""
    inputs = {
        "teste": f"{DATA}/teste.parquet",
        "adapter": f"results/{wildcards.exp}/adapter",
    }
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


def predict_base_inputs(wildcards):
    """The test split, plus the base model folder when this workflow builds it (no adapter)."""
    inputs = {"teste": f"{DATA}/teste.parquet"}
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


def predict_settings(wildcards):
    """The experiment's `predicao` section minus `comparar_base` (which only decides if predict_base runs)."""
    section = exp_params(wildcards, "predicao")
    return {k: v for k, v in section.items() if k != "comparar_base"}


def predict_model(wildcards):
    """Only the base model's name: `modelo.saida` (the experiment's name) does not change predictions."""
    return {"base": exp_params(wildcards, "modelo")["base"]}


def predict_training(wildcards):
    """The training keys that shape inference: backend, quantization, context length, seed (for sampling)."""
    section = exp_params(wildcards, "treinamento")
    return {k: section[k] for k in ("backend", "nbits", "max_seq_length", "seed")}


def evaluate_inputs(wildcards):
    """The fine-tuned predictions, plus the base model's when `predicao.comparar_base` asks for them."""
    inputs = {"predicoes": f"results/{wildcards.exp}/predicoes/teste.jsonl"}
    if exp_params(wildcards, "predicao")["comparar_base"]:
        inputs["base"] = f"results/{wildcards.exp}/predicoes/teste_base.jsonl"
    return inputs


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predicoes="results/{exp}/predicoes/teste.jsonl",
        memoria="results/{exp}/treinamento/memoria_predicao.jsonl",
        grafico="results/{exp}/treinamento/memoria_predicao.png",
    log:
        "results/logs/predict/{exp}.log",
    benchmark:
        "results/benchmarks/predict/{exp}.tsv"
    conda:
        train_env
    threads: 4
    resources:
        gpu=train_gpus,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    params:
        predicao=predict_settings,
        modelo=predict_model,
        treinamento=predict_training,
    script:
        "../scripts/predict.py"


rule predict_base:
    input:
        unpack(predict_base_inputs),
    output:
        predicoes="results/{exp}/predicoes/teste_base.jsonl",
    log:
        "results/logs/predict_base/{exp}.log",
    benchmark:
        "results/benchmarks/predict_base/{exp}.tsv"
    conda:
        train_env
    threads: 4
    resources:
        gpu=train_gpus,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    params:
        predicao=predict_settings,
        modelo=predict_model,
        treinamento=predict_training,
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metricas="results/{exp}/avaliacao/metricas.json",
        por_registro="results/{exp}/avaliacao/por_registro.csv",
    log:
        "results/logs/evaluate/{exp}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        formato_saida=CFG["formatos"]["formato_saida"],
        avaliacao=CFG["avaliacao"],
    script:
        "../scripts/evaluate.py"
