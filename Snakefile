# Afinar: LoRA fine-tuning of LLMs from one YAML file.
#   snakemake --cores 2                                              # the bundled demo (config/config.yaml), CPU
#   snakemake --cores 8 --resources gpu=1 --configfile my.yaml       # your experiment on a GPU workstation
#   snakemake --profile profiles/slurm --configfile my.yaml          # on a SLURM cluster
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default only when no --configfile is given: a user's file replaces it rather
# than being merged into it (Snakemake would otherwise mix the demo's keys into the user's experiment).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    exp="|".join(re.escape(name) for name in EXPS),
    split="|".join(SPLITS),


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/report.smk"
include: "rules/export.smk"


# Cheap rules run on the submitting machine, never as cluster jobs.
localrules:
    all,
    evaluate,
    charts,
    report,
    compare,


rule all:
    default_target: True
    input:
        all_targets,


# Before any job: a SLURM run checks its partitions exist, and every base model a planned job loads must
# be a local folder, in the Hugging Face cache, or downloadable (not offline, Hub reachable).
onstart:
    try:
        check_slurm_partitions(workflow)
        check_models_before_jobs(workflow)
    except AfinarError as exc:
        fail(str(exc))
    check_before_jobs()
