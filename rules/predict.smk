# Prediction and evaluation, per experiment:
#   predict       results/{exp}/adapter + teste.parquet → results/{exp}/predicoes/teste.jsonl
#                 (+ treinamento/memoria_predicao.jsonl/.png: RAM and GPU during prediction, the seed's files)
#   predict_base  teste.parquet (base model only)      → results/{exp}/predicoes/teste_base.jsonl
#                 (only pulled in by `predicao.comparar_base: true`; the adapter is an `ancient` input that
#                  only orders it after training, so retraining never reruns it; predict has the higher
#                  priority, makes the base predictions first in its own process, and predict_base copies
#                  them when they match instead of loading the model a second time)
#   evaluate      predictions                          → results/{exp}/avaliacao/metricas.json + por_registro.csv
# Params carry exactly what each rule depends on, so that editing other keys never reruns it
# (predicao.batch_size, a speed setting, is read by the script at run time: see PREDICT_NOT_PARAMS).


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predicoes="results/{exp}/predicoes/teste.jsonl",
        memoria="results/{exp}/treinamento/memoria_predicao.jsonl",
        grafico=report(
            "results/{exp}/treinamento/memoria_predicao.png",
            caption="captions/memoria_predicao.rst",
            category="{exp}",
            subcategory="Prediction",
        ),
    log:
        "results/logs/predict/{exp}.log",
    benchmark:
        "results/benchmarks/predict/{exp}.tsv"
    priority: 1
    conda:
        train_env
    threads: 4
    resources:
        gpu=train_gpus,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    params:
        codigo=library_code("predict.py"),
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
        codigo=library_code("predict.py"),
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
        codigo=library_code("evaluate.py"),
        formato_saida=CFG["formatos"]["formato_saida"],
        avaliacao=CFG["avaliacao"],
    script:
        "../scripts/evaluate.py"
