# Config → experiments, targets and small named helpers shared by every rule file.
# No logic lives in lambdas: rules call the named functions below.
import functools
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from afinar.code_version import library_digest  # noqa: E402
from afinar.config import check_paths, experiments, load_config, read_yaml  # noqa: E402
from afinar import layout  # noqa: E402
from afinar.errors import AfinarError, fail  # noqa: E402
from afinar.gpu_slots import machine_has_gpu  # noqa: E402
from afinar.preflight import (  # noqa: E402
    check_models_available,
    check_quantized_training_has_gpu,
    experiments_needing_models,
)
from afinar.runtime import wants_gpu  # noqa: E402
from afinar.train import dist_config as distributed  # noqa: E402
from afinar.builtin_models import SMOLLM2_FOLDER  # noqa: E402
from afinar.config.profile_check import (  # noqa: E402
    check_slurm_partitions,
    check_workflow_placeholders,
)


def _load():
    """Normalize and check the config once, before any job: a bad config is one line and exit 1."""
    try:
        # Snakemake's reader keeps a repeated key silently: read each config file with ours first
        for path in workflow.configfiles:
            read_yaml(path)
        cfg = load_config(dict(config))
        problems = check_paths(cfg)
    except AfinarError as exc:
        fail(str(exc))
    if problems:
        fail(problems[0] if len(problems) == 1 else "; ".join(problems))
    return cfg


def _check_profile():
    """An unedited cluster profile (<YOUR_PARTITION> ...) is one clear line, not a cryptic sbatch failure."""
    try:
        check_workflow_placeholders(workflow)
    except AfinarError as exc:
        fail(str(exc))


def check_before_jobs():
    """Run by `onstart`, after the DAG is built and before any job: the decryption key is present,
    well-formed and decrypts the source, so a bad key writes nothing (not even pairs.parquet).
    """
    from afinar.data.crypto import check_key_before_run

    if DATASET_MODE or not {"pair", "decrypt"} & {
        j.rule.name for j in workflow.dag.needrun_jobs()
    }:
        return
    try:
        check_key_before_run(
            CFG["pastas"]["entrada"], CFG["misc"]["env_chave_criptografia"]
        )
    except AfinarError as exc:
        fail(str(exc))


def _check_gpu_resources():
    """`--resources gpu=0` with a GPU-only backend would scale the job's request down and fail late:
    say so before any job runs instead."""
    gpu = workflow.global_resources.get("gpu")
    gpu = getattr(gpu, "value", gpu)
    if gpu is not None and int(gpu) == 0:
        for name, exp in EXPS.items():
            if exp["treinamento"]["backend"] == "unsloth":
                fail(
                    f"experiment {name}: treinamento.backend: unsloth needs a GPU but snakemake was given "
                    "--resources gpu=0 — give it one (--resources gpu=1) or set treinamento.backend: transformers"
                )


def check_models_before_jobs(workflow):
    """Called from onstart: the base models of the experiments whose planned jobs load one are available.

    A Hub id that is not cached while offline would otherwise fail only in the train job, after the
    data stages and ~100 s of Hub retries; likewise a 4/8-bit training (the default nbits) run by the
    local executor on a machine without a GPU."""
    jobs = list(workflow.dag.needrun_jobs())
    needed = experiments_needing_models(jobs)
    if needed:
        check_models_available(EXPS, needed)
    plugin = getattr(workflow, "executor_plugin", None)
    training = {str(j.wildcards["exp"]) for j in jobs if j.rule.name == "train"}
    if training and getattr(plugin, "name", "local") == "local":
        check_quantized_training_has_gpu(EXPS, training, machine_has_gpu())


CFG = _load()
_check_profile()
EXPS = experiments(CFG)
_check_gpu_resources()
DATA = layout.DATA
SPLITS = list(layout.SPLITS)
DATASET_MODE = CFG["formatos"]["tipo_entrada"] == "dataset"
# An encrypted source makes the whole run private: every file Afinar or Snakemake creates (decrypted splits,
# predictions, reports, logs, .snakemake/ metadata, the --report HTML) is readable by its owner only.
# Job processes inherit the umask; on a cluster each job parses this file again and sets it too.
ENCRYPTED = bool(
    not DATASET_MODE
    and CFG["misc"]["env_chave_criptografia"]
    and CFG["pastas"]["entrada"]["dataframe"]
)
if ENCRYPTED:
    os.umask(0o077)
    # .snakemake/ and this run's log were created before the Snakefile was read: made private too
    for path in [
        Path(".snakemake"),
        *Path(".snakemake").glob("log/*"),
        Path(".snakemake/log"),
    ]:
        if path.exists():
            path.chmod(0o700 if path.is_dir() else 0o600)


SCRIPTS = Path(workflow.basedir) / "scripts"


@functools.cache
def library_code(script):
    """Digest of the afinar modules that scripts/<script> imports (the `codigo` param of its rules).

    Snakemake notices an edited rule script by itself, not an edited library module; with this param a
    change to e.g. afinar/evaluate/evaluation.py reruns evaluate and what follows, nothing upstream.
    Computed once per script and run (functools.cache)."""
    return library_digest(SCRIPTS / script, SCRIPTS)


def exp_params(wildcards, section):
    """The experiment's normalized config section (modelo, treinamento, lora or predicao)."""
    return EXPS[wildcards.exp][section]


def exp_section(section):
    """A params function returning one config section of the experiment being run."""

    def _section(wildcards):
        return exp_params(wildcards, section)

    return _section


def base_model_input(wildcards):
    """The base model folder as an input when a rule of this workflow builds it (the demo model)."""
    base = EXPS[wildcards.exp]["modelo"]["base"]
    return [base] if layout.under_results(base) else []


def exp_targets(exp):
    """Everything one experiment produces by default: its report pulls in training, predictions and charts.

    The adapter and the predictions are targets themselves: Snakemake accepts a missing intermediate
    file while the files made from it are up to date, so after a run killed during `--forcerun train`
    (which deletes the adapter first) a plain rerun would otherwise say "Nothing to be done".
    """
    return [
        str(layout.exp_path(exp, p))
        for p in (layout.ADAPTER, layout.PREDICTIONS, layout.REPORT, layout.METRICS)
    ]


def all_targets(wildcards):
    """The default target: every experiment's report, the comparison when there are several, exports."""
    targets = [t for exp in EXPS for t in exp_targets(exp)]
    if len(EXPS) > 1:
        targets += list(layout.COMPARISON)
    for exp in EXPS:
        targets += export_targets(exp)
    return targets


# --- helpers of rules/train.smk ------------------------------------------------------------
DEMO_MODEL = layout.DEMO_MODEL
SMOLLM2_MODEL = SMOLLM2_FOLDER  # modelo.base: smollm2-135m-instruct resolves here


def demo_corpus(wildcards):
    """Every text file of the bundled example: the tokenizer of the tiny model is trained on them."""
    return sorted(
        str(p) for p in (Path(workflow.basedir) / "resources/example").rglob("*.txt")
    )


def filter_tokens_inputs(wildcards):
    """The three splits, plus the base model folder when this workflow builds it (its tokenizer counts)."""
    inputs = {split: f"{DATA}/{split}.parquet" for split in SPLITS}
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


def train_inputs(wildcards):
    """The splits and the token filter's decisions, plus the base model folder when this workflow builds it."""
    inputs = {
        "treino": f"{DATA}/treino.parquet",
        "validacao": f"{DATA}/validacao.parquet",
        "filtro_tokens": f"{DATA}/filtro_tokens/{wildcards.exp}.json",
    }
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


def train_settings(wildcards):
    """`treinamento` minus `checkpoint_minutos`: how often checkpoints are written never changes the
    adapter, so it must not rerun train; it travels as the `checkpoint_s` resource instead.
    """
    section = exp_params(wildcards, "treinamento")
    return {k: v for k, v in section.items() if k != "checkpoint_minutos"}


def train_checkpoint_s(wildcards):
    """`treinamento.checkpoint_minutos` in whole seconds (resources are integers; 0 = off)."""
    return round(
        60 * float(exp_params(wildcards, "treinamento")["checkpoint_minutos"] or 0)
    )


def train_gpus(wildcards):
    """GPUs of the job on this node: `distribuido.gpus` (default 1) for the Unsloth/auto backends; none for
    `backend: transformers`, the CPU path (its processes then run on the CPU). On several nodes the
    per-node count goes through `gres` instead (SLURM's --gpus counts the whole job)."""
    tr = EXPS[wildcards.exp]["treinamento"]
    if not wants_gpu(tr["backend"]):
        return 0
    d = distributed.settings(tr)
    return d.gpus if d.nos == 1 else None


def train_gres(wildcards):
    """`gpu:N` per node for a GPU training on several SLURM nodes; unset otherwise."""
    tr = EXPS[wildcards.exp]["treinamento"]
    d = distributed.settings(tr)
    return f"gpu:{d.gpus}" if d.nos > 1 and wants_gpu(tr["backend"]) else None


def train_cpus_per_task(wildcards, threads):
    """CPUs of each SLURM task of a distributed CPU training (backend transformers, gloo): the job's
    threads shared among the tasks of a node, so that N tasks ask the node's threads, not N times them.
    Unset otherwise (one process: threads; GPU jobs: the profile's cpus_per_gpu)."""
    tr = EXPS[wildcards.exp]["treinamento"]
    d = distributed.settings(tr)
    if wants_gpu(tr["backend"]) or not d.distributed:
        return None
    return d.threads_per_process(threads)


def train_slurm(key):
    """One SLURM geometry resource of a distributed training (nodes, tasks, mpi, ...); unset for one
    process. See afinar.train.distributed.slurm_resources."""

    def _value(wildcards):
        return distributed.slurm_resources(EXPS[wildcards.exp]["treinamento"]).get(key)

    return _value


def train_env(wildcards):
    """Unsloth's env (TRL 1.15, CUDA) for the GPU backends; the CPU env (TRL 1.16) for transformers."""
    if wants_gpu(EXPS[wildcards.exp]["treinamento"]["backend"]):
        return "../envs/train.yaml"
    return "../envs/train-cpu.yaml"


def train_mem_mb(wildcards):
    """Host memory to reserve per node: small for the demo model, 8 GB for SmolLM2-135M (3.9 GB peak
    measured with make demo-real on CPU), generous for real models (override in a profile), times the
    training processes of a node."""
    base = EXPS[wildcards.exp]["modelo"]["base"].rstrip("/")
    if base == SMOLLM2_MODEL:
        per_process = 8000
    else:
        per_process = 4000 if layout.under_results(base) else 32000
    return per_process * distributed.settings(EXPS[wildcards.exp]["treinamento"]).gpus


def train_runtime(wildcards):
    """Minutes (SLURM time limit); a killed job resumes from its checkpoints on the next run."""
    base = EXPS[wildcards.exp]["modelo"]["base"].rstrip("/")
    if base == SMOLLM2_MODEL:
        return 120
    return 30 if layout.under_results(base) else 24 * 60


# --- helpers of rules/predict.smk ------------------------------------------------------------


def predict_inputs(wildcards):
    """The test split and the trained adapter, plus the base model folder when this workflow builds it."""
    inputs = {
        "teste": f"{DATA}/teste.parquet",
        "adapter": str(layout.exp_path(wildcards.exp, layout.ADAPTER)),
    }
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


def predict_base_inputs(wildcards):
    """The test split, plus the base model folder when this workflow builds it.

    The adapter is an `ancient` input: it only orders predict_base after training (its changes never rerun
    it), so that predict, of higher priority, can run first and make the base predictions with the model
    it loaded anyway; predict_base then copies them (afinar.predict.base_cache).
    """
    inputs = {
        "teste": f"{DATA}/teste.parquet",
        "after_adapter": ancient(str(layout.exp_path(wildcards.exp, layout.ADAPTER))),
    }
    inputs.update(zip(["base"], base_model_input(wildcards)))
    return inputs


#: `predicao` keys that change speed or what runs, never the predictions: not params (no reruns)
PREDICT_NOT_PARAMS = ("comparar_base", "batch_size")


def predict_settings(wildcards):
    """The experiment's `predicao` keys that shape the predictions (the scripts read the others at run time)."""
    section = exp_params(wildcards, "predicao")
    return {k: v for k, v in section.items() if k not in PREDICT_NOT_PARAMS}


def predict_model(wildcards):
    """Only the base model's name: `modelo.saida` (the experiment's name) does not change predictions."""
    return {"base": exp_params(wildcards, "modelo")["base"]}


def predict_training(wildcards):
    """The training keys that shape inference: backend, quantization, precision, context length, seed (for sampling)."""
    section = exp_params(wildcards, "treinamento")
    return {
        k: section[k]
        for k in ("backend", "nbits", "precisao", "max_seq_length", "seed")
    }


def evaluate_inputs(wildcards):
    """The fine-tuned predictions, plus the base model's when `predicao.comparar_base` asks for them."""
    inputs = {"predicoes": str(layout.exp_path(wildcards.exp, layout.PREDICTIONS))}
    if exp_params(wildcards, "predicao")["comparar_base"]:
        inputs["base"] = str(layout.exp_path(wildcards.exp, layout.BASE_PREDICTIONS))
    return inputs


# --- helpers of rules/report.smk ------------------------------------------------------------


def exp_value(section, key):
    """A params function returning one key of an experiment's config section (reruns only when it changes)."""

    def _value(wildcards):
        return EXPS[wildcards.exp][section][key]

    return _value


def exp_config(wildcards):
    """The experiment's merged config {modelo, treinamento, lora, predicao}, as the report shows it,
    without `predicao.batch_size`: a speed setting must never rerun anything (the report included).
    """
    exp = EXPS[wildcards.exp]
    predicao = {k: v for k, v in exp["predicao"].items() if k != "batch_size"}
    return {**exp, "predicao": predicao}


def report_misc(wildcards):
    """`misc` as the report uses it: without `log_level`, which must never rerun anything."""
    return {k: v for k, v in CFG["misc"].items() if k != "log_level"}


def data_config(wildcards):
    """The data sections that produced the splits (the report shows them next to the experiment's)."""
    section = "dataset" if DATASET_MODE else "pastas"
    return {"formatos": CFG["formatos"], section: CFG[section]}


def report_data_inputs(wildcards):
    """Split and token-filter summaries always; the pairing summary only in folder mode (dataset mode has none)."""
    inputs = {
        "divisao": f"{DATA}/divisao.json",
        "filtro_tokens": f"{DATA}/filtro_tokens/{wildcards.exp}.json",
    }
    if not DATASET_MODE:
        inputs["pareamento"] = f"{DATA}/pareamento.json"
    return inputs


def compare_inputs(wildcards):
    """Per experiment, in EXPS order: metrics, training summary, hardware and training logs."""
    return {
        "metricas": [str(layout.exp_path(exp, layout.METRICS)) for exp in EXPS],
        "summary": [str(layout.exp_path(exp, layout.METRICS_SUMMARY)) for exp in EXPS],
        "hardware": [
            str(layout.exp_path(exp, layout.HARDWARE_METRICS)) for exp in EXPS
        ],
        "training": [
            str(layout.exp_path(exp, layout.TRAINING_METRICS)) for exp in EXPS
        ],
    }


def compare_configs(wildcards):
    """Every experiment's merged config (the comparison table names the setup of each)."""
    return EXPS


# --- helpers of rules/export.smk ------------------------------------------------------------
from afinar.export.merged import export_targets as _export_targets  # noqa: E402

EXPORTACAO = CFG["exportacao"]


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
