# Training, per experiment:
#   demo_model   resources/example/ text files          → results/demo/modelo-base/ (tiny Qwen2, random weights)
#   train        results/data/{treino,validacao}.parquet → results/{exp}/adapter/ + metric files
# Checkpoints go to results/{exp}/checkpoints/, deliberately NOT an output: Snakemake deletes the outputs
# of a failed job, and the checkpoints are what lets a killed job resume when snakemake runs again.
# Metric files grow there too (appended across resumes) and are copied to the outputs at the end.
DEMO_MODEL = "results/demo/modelo-base"
GPU_BACKENDS = ("auto", "unsloth")


def demo_corpus(wildcards):
    """Every text file of the bundled example: the tokenizer of the tiny model is trained on them."""
    return sorted(str(p) for p in Path("resources/example").rglob("*.txt"))


def train_inputs(wildcards):
    """The splits, plus the base model folder when this workflow builds it (the demo model)."""
    inputs = {
        "treino": f"{DATA}/treino.parquet",
        "validacao": f"{DATA}/validacao.parquet",
    }
    base = EXPS[wildcards.exp]["modelo"]["base"]
    if base.rstrip("/") == DEMO_MODEL:
        inputs["base"] = DEMO_MODEL
    return inputs


def train_gpus(wildcards):
    """One GPU slot for the Unsloth/auto backends; none for `backend: transformers`, the CPU path."""
    return 1 if EXPS[wildcards.exp]["treinamento"]["backend"] in GPU_BACKENDS else 0


def train_env(wildcards):
    """Unsloth's env (TRL 1.15, CUDA) for the GPU backends; the CPU env (TRL 1.16) for transformers."""
    if EXPS[wildcards.exp]["treinamento"]["backend"] in GPU_BACKENDS:
        return "../envs/train.yaml"
    return "../envs/train-cpu.yaml"


def train_mem_mb(wildcards):
    """Host memory to reserve: small for the demo model, generous for real models (override in a profile)."""
    return (
        4000 if EXPS[wildcards.exp]["modelo"]["base"].startswith("results/") else 32000
    )


def train_runtime(wildcards):
    """Minutes (SLURM time limit); a killed job resumes from its checkpoints on the next run."""
    return (
        30 if EXPS[wildcards.exp]["modelo"]["base"].startswith("results/") else 24 * 60
    )


rule demo_model:
    input:
        demo_corpus,
    output:
        directory(DEMO_MODEL),
    log:
        "results/logs/demo_model.log",
    benchmark:
        "results/benchmarks/demo_model.tsv"
    conda:
        "../envs/train-cpu.yaml"
    params:
        log_level=CFG["misc"]["log_level"],
        seed=0,
    script:
        "../scripts/demo_model.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        adapter=directory("results/{exp}/adapter"),
        summary="results/{exp}/metrics_summary.json",
        stream="results/{exp}/metrics_stream.jsonl",
        training_metrics="results/{exp}/treinamento/training_metrics.jsonl",
        hardware_metrics="results/{exp}/treinamento/hardware_metrics.jsonl",
    log:
        "results/logs/train/{exp}.log",
    benchmark:
        "results/benchmarks/train/{exp}.tsv"
    conda:
        train_env
    threads: 4
    resources:
        gpu=train_gpus,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    params:
        log_level=CFG["misc"]["log_level"],
        modelo=exp_section("modelo"),
        treinamento=exp_section("treinamento"),
        lora=exp_section("lora"),
        checkpoints="results/{exp}/checkpoints",
    script:
        "../scripts/train.py"
