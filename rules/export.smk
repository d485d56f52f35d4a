# Optional exports of an experiment's model; in `rule all` only when `exportacao` asks for them:
#   export_merged  adapter + base (16-bit)  → results/{exp}/exportado/merged/   (exportacao.merged)
#   export_gguf    merged                   → results/{exp}/exportado/modelo-{tipo}.gguf  (exportacao.gguf)
#   export_onnx    merged                   → results/{exp}/exportado/onnx/     (exportacao.onnx)
# Any type can also be asked for by name, e.g. `snakemake results/demo/exportado/modelo-f16.gguf`.
from afinar.export import export_targets as _export_targets  # noqa: E402

EXPORTACAO = CFG["exportacao"]


wildcard_constraints:
    gguf_tipo="[A-Za-z0-9_]+",


def export_targets(exp):
    """The export outputs of experiment `exp` that `exportacao` asks for (used by `rule all`)."""
    return _export_targets(EXPORTACAO, exp)


def export_base(wildcards):
    """The experiment's base model: the merge reloads it in 16-bit."""
    return EXPS[wildcards.exp]["modelo"]["base"]


def export_precisao(wildcards):
    """Training precision decides the merged dtype (fp16 stays fp16, everything else bf16)."""
    return EXPS[wildcards.exp]["treinamento"]["precisao"]


def export_nbits(wildcards):
    """Quantisation used in training (recorded; the merge is always onto the dequantised 16-bit base)."""
    return EXPS[wildcards.exp]["treinamento"]["nbits"]


def export_gguf_tipo(wildcards):
    """The GGUF type named in the output file."""
    return wildcards.gguf_tipo.lower()


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
        tipo=export_gguf_tipo,
        llama_cpp=EXPORTACAO["llama_cpp"],
        pre_tokenizer=EXPORTACAO.get("gguf_pre_tokenizer", ""),
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
    script:
        "../scripts/export.py"
