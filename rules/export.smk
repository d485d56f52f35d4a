# Optional exports of an experiment's model; in `rule all` only when `exportacao` asks for them:
#   export_merged  adapter + base (16-bit)  → results/{exp}/exportado/merged/   (exportacao.merged)
#   export_gguf    merged                   → results/{exp}/exportado/modelo-{tipo}.gguf  (exportacao.gguf)
#   export_onnx    merged                   → results/{exp}/exportado/onnx/     (exportacao.onnx)
# Any type can also be asked for by name, e.g. `snakemake results/demo/exportado/modelo-f16.gguf`.


wildcard_constraints:
    gguf_tipo="[A-Za-z0-9_]+",


rule export_merged:
    input:
        adapter="results/{exp}/adapter",
        base=base_model_input,
    output:
        merged=directory("results/{exp}/exportado/merged"),
    log:
        "results/logs/export_merged/{exp}.log",
    benchmark:
        "results/benchmarks/export_merged/{exp}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        codigo=library_code("export.py"),
        base=export_base,
        precisao=export_precisao,
        nbits=export_nbits,
    script:
        "../scripts/export.py"


rule export_gguf:
    input:
        merged="results/{exp}/exportado/merged",
    output:
        gguf="results/{exp}/exportado/modelo-{gguf_tipo}.gguf",
    log:
        "results/logs/export_gguf/{exp}-{gguf_tipo}.log",
    benchmark:
        "results/benchmarks/export_gguf/{exp}-{gguf_tipo}.tsv"
    conda:
        "../envs/train-cpu.yaml"
    params:
        codigo=library_code("export.py"),
        tipo=export_gguf_tipo,
        llama_cpp=EXPORTACAO["llama_cpp"],
        pre_tokenizer=EXPORTACAO["gguf_pre_tokenizer"],
    script:
        "../scripts/export.py"


rule export_onnx:
    input:
        merged="results/{exp}/exportado/merged",
    output:
        onnx=directory("results/{exp}/exportado/onnx"),
    log:
        "results/logs/export_onnx/{exp}.log",
    benchmark:
        "results/benchmarks/export_onnx/{exp}.tsv"
    conda:
        "../envs/train-cpu.yaml"
    params:
        codigo=library_code("export.py"),
    script:
        "../scripts/export.py"
