# Data stages, shared by every experiment of a config (one split for a whole sweep):
#   pair    raw folders | input dataframe → results/data/pairs.parquet + pareamento.json
#   decrypt pairs.parquet + Fernet key    → results/data/pairs.plain.parquet (0600; a hard link if not encrypted)
#   split   plain pairs | dataset files   → results/data/{treino,validacao,teste}.parquet + divisao.csv/.json
# Dataset mode (formatos.tipo_entrada: dataset) enters at split: pair and decrypt are not in its DAG.
# Each rule's params carry exactly the config it reads, so editing training keys never reruns these.
# The input functions live in the library (afinar.data.pairing / afinar.data.splits), where they are tested.
from afinar.data.pairing import pair_input_function  # noqa: E402
from afinar.data.splits import split_input_function  # noqa: E402

PAIR_ENTRADA = {
    key: CFG["pastas"]["entrada"][key]
    for key in ("pasta", "mascara", "dataframe", "dataframe_col", "dataframe_id")
}
SPLIT_TEMPLATE_SECTION = CFG["dataset"] if DATASET_MODE else CFG["pastas"]["entrada"]


rule pair:
    input:
        pair_input_function(CFG),
    output:
        pairs=f"{DATA}/pairs.parquet",
        summary=f"{DATA}/pareamento.json",
    log:
        "results/logs/pair.log",
    benchmark:
        "results/benchmarks/pair.tsv"
    conda:
        "../envs/data.yaml"
    params:
        codigo=library_code("pair.py"),
        entrada=PAIR_ENTRADA,
        predicao=CFG["pastas"]["predicao"],
        validacao=CFG["pastas"]["validacao"],
        formatos=CFG["formatos"],
    script:
        "../scripts/pair.py"


rule decrypt:
    input:
        pairs=f"{DATA}/pairs.parquet",
    output:
        plain=f"{DATA}/pairs.plain.parquet",
    log:
        "results/logs/decrypt.log",
    benchmark:
        "results/benchmarks/decrypt.tsv"
    conda:
        "../envs/data.yaml"
    params:
        codigo=library_code("decrypt.py"),
        env_var=CFG["misc"]["env_chave_criptografia"],
        encrypted_input=bool(CFG["pastas"]["entrada"]["dataframe"]),
        skip_invalidos=CFG["pastas"]["validacao"]["skip_invalidos"],
    script:
        "../scripts/decrypt.py"


rule split:
    input:
        unpack(split_input_function(CFG, DATA)),
    output:
        treino=f"{DATA}/treino.parquet",
        validacao=f"{DATA}/validacao.parquet",
        teste=f"{DATA}/teste.parquet",
        divisao_csv=f"{DATA}/divisao.csv",
        divisao_json=f"{DATA}/divisao.json",
    log:
        "results/logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    conda:
        "../envs/data.yaml"
    params:
        codigo=library_code("split.py"),
        tipo_entrada=CFG["formatos"]["tipo_entrada"],
        divisao=CFG["pastas"]["divisao"],
        prompt_template=SPLIT_TEMPLATE_SECTION["prompt_template"],
        tag_texto=SPLIT_TEMPLATE_SECTION["tag_texto"],
        dataset=CFG["dataset"] if DATASET_MODE else None,
    script:
        "../scripts/split.py"
