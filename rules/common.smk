# Config → experiments, targets and small named helpers shared by every rule file.
# No logic lives in lambdas: rules call the named functions below.
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from afinar.config import check_paths, experiments, load_config  # noqa: E402
from afinar.errors import AfinarError, fail  # noqa: E402


def _load():
    """Normalize and check the config once, before any job: a bad config is one line and exit 1."""
    try:
        cfg = load_config(dict(config))
        problems = check_paths(cfg)
    except AfinarError as exc:
        fail(str(exc))
    if problems:
        fail(problems[0] if len(problems) == 1 else "; ".join(problems))
    return cfg


CFG = _load()
EXPS = experiments(CFG)
DATA = "results/data"
SPLITS = ["treino", "validacao", "teste"]
DATASET_MODE = CFG["formatos"]["tipo_entrada"] == "dataset"


wildcard_constraints:
    exp="|".join(re.escape(name) for name in EXPS),
    split="|".join(SPLITS),


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
    return [base] if base.startswith("results/") else []


def exp_targets(exp):
    """Everything one experiment produces by default: its report pulls in training, predictions and charts."""
    return [f"results/{exp}/relatorio.md", f"results/{exp}/avaliacao/metricas.json"]


def all_targets(wildcards):
    """`rule all`: every experiment's report, the comparison when there are several, optional exports."""
    targets = [t for exp in EXPS for t in exp_targets(exp)]
    if len(EXPS) > 1:
        targets += ["results/comparacao.md", "results/comparacao.png"]
    for exp in EXPS:
        targets += export_targets(exp)
    return targets
