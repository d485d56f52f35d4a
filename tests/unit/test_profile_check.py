"""afinar.config.profile_check: an unedited or wrong cluster profile fails with one clear line before any job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from afinar.config.profile_check import (
    check_partitions,
    check_profile_placeholders,
    find_placeholders,
    parse_sinfo_partitions,
    partition_problems,
)
from afinar.errors import AfinarError

REPO = Path(__file__).resolve().parents[2]


def shipped_slurm_profile() -> tuple[dict, dict]:
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    return profile["default-resources"], profile["set-resources"]


def test_shipped_slurm_profile_is_refused_until_edited():
    defaults, per_rule = shipped_slurm_profile()
    with pytest.raises(AfinarError) as err:
        check_profile_placeholders(defaults, per_rule)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("profiles/slurm/config.yaml: placeholder(s) not replaced")
    for part in (
        "default-resources: slurm_partition=<YOUR_PARTITION>",
        "default-resources: slurm_account=<YOUR_ACCOUNT>",
        "set-resources: train: slurm_partition=<YOUR_GPU_PARTITION>",
        "set-resources: predict: slurm_partition=<YOUR_GPU_PARTITION>",
    ):
        assert part in message


def test_shipped_slurm_profile_asks_a_gpu_for_train_and_predict():
    defaults, per_rule = shipped_slurm_profile()
    assert per_rule["predict"]["gpu"] == 1
    # train asks for its GPUs itself (treinamento.distribuido.gpus): a profile value would override the rule
    for key in ("gpu", "gres", "nodes", "tasks", "tasks_per_node"):
        assert key not in per_rule["train"]
    for rule in ("train", "predict"):
        assert per_rule[rule]["cpus_per_gpu"] >= 1
        assert (
            per_rule[rule]["runtime"] > defaults["runtime"] and per_rule[rule]["mem_mb"] > defaults["mem_mb"]
        )


def test_edited_profile_passes_and_lowercase_angle_text_is_not_a_placeholder():
    defaults = {
        "slurm_partition": "cpu",
        "slurm_account": "'proj'",
        "mem_mb": 8000,
        "slurm_extra": "'--comment=<x>'",
    }
    per_rule = {"train": {"slurm_partition": "gpu", "gpu": 1}}
    assert find_placeholders(defaults, per_rule) == []
    check_profile_placeholders(defaults, per_rule)


class Raw:
    """Stands for Snakemake's Resource objects, which keep what the user wrote in ``.raw``."""

    def __init__(self, raw):
        self.raw = raw


def test_placeholders_found_through_snakemake_resource_objects():
    found = find_placeholders({"slurm_partition": Raw("<YOUR_PARTITION>"), "mem_mb": Raw(None)}, {})
    assert found == ["default-resources: slurm_partition=<YOUR_PARTITION>"]


SINFO = "cpu*\ngpu\ngpu\nlong\n"


def test_parse_sinfo_partitions():
    assert parse_sinfo_partitions(SINFO) == (["cpu", "gpu", "long"], "cpu")
    assert parse_sinfo_partitions("a\nb\n") == (["a", "b"], None)


def test_partitions_that_exist_pass():
    defaults = {"slurm_partition": "cpu"}
    per_rule = {"train": {"slurm_partition": "'gpu'"}, "predict": {"slurm_partition": "gpu,long"}}
    check_partitions(defaults, per_rule, ["pair", "train", "predict"], SINFO)


def test_missing_partition_uses_the_cluster_default_when_there_is_one():
    assert partition_problems({}, {}, ["pair"], ["cpu", "gpu"], "cpu") == []


def test_missing_partition_without_cluster_default_is_a_clear_error():
    with pytest.raises(AfinarError) as err:
        check_partitions({}, {"train": {"slurm_partition": "gpu"}}, ["pair", "train"], "cpu\ngpu\n")
    message = str(err.value)
    assert "rule pair: no slurm_partition and the cluster has no default partition" in message
    assert "rule train" not in message
    assert "partitions on this cluster: cpu, gpu" in message and "sinfo -s" in message


def test_unknown_partition_is_named_with_the_ones_that_exist():
    with pytest.raises(AfinarError) as err:
        check_partitions({"slurm_partition": "cpu"}, {"train": {"slurm_partition": "a100"}}, ["train"], SINFO)
    assert "rule train: slurm_partition=a100 is not a partition here" in str(err.value)
    assert "cpu*, gpu, long" in str(err.value)


# ------------------------------------------------------------------ which profile, CPUs per GPU, node sizes


def test_errors_name_the_profile_actually_given(tmp_path, monkeypatch):
    from afinar.config.profile_check import profile_source

    copy = tmp_path / "my-cluster"
    copy.mkdir()
    (copy / "config.yaml").write_text("executor: slurm\n")
    monkeypatch.chdir(tmp_path)
    assert profile_source(["--profile", "my-cluster", "-n"], {}) == "my-cluster/config.yaml"
    assert profile_source(["--profile=my-cluster/config.yaml"], {}) == "my-cluster/config.yaml"
    assert profile_source([], {"SNAKEMAKE_PROFILE": "my-cluster"}) == "my-cluster/config.yaml"
    assert "--set-resources" in profile_source(["-n"], {})
    defaults, per_rule = shipped_slurm_profile()
    with pytest.raises(AfinarError, match=r"^my-cluster/config.yaml: placeholder"):
        check_profile_placeholders(defaults, per_rule, profile_source(["--profile", "my-cluster"], {}))


def test_a_cpus_per_task_default_that_would_drop_cpus_per_gpu_is_refused():
    from afinar.config.profile_check import check_cpu_settings

    defaults, per_rule = shipped_slurm_profile()
    check_cpu_settings(defaults, per_rule)  # the shipped profile is right
    with pytest.raises(AfinarError, match=r"default-resources: cpus_per_task=2 would replace .*train"):
        check_cpu_settings({**defaults, "cpus_per_task": 2}, per_rule, "p.yaml")
    check_cpu_settings(defaults, {**per_rule, "pair": {"cpus_per_task": 4}})  # a CPU rule may set it


NODES = "gpu|64|512000|gpu:h100:4(S:0-1)\ngpu|64|512000|gpu:h100:4(S:0-1)\ncpu*|8|16000|(null)\n"


def test_node_sizes_from_sinfo():
    from afinar.config.profile_check import parse_sinfo_nodes

    assert parse_sinfo_nodes(NODES) == [
        {"partition": "gpu", "cpus": 64, "mem_mb": 512000, "gpus": 4},
        {"partition": "gpu", "cpus": 64, "mem_mb": 512000, "gpus": 4},
        {"partition": "cpu", "cpus": 8, "mem_mb": 16000, "gpus": 0},
    ]


def test_jobs_that_fit_no_node_are_named_with_what_the_nodes_have():
    from afinar.config.profile_check import check_node_sizes, job_request, parse_sinfo_nodes

    nodes = parse_sinfo_nodes(NODES)
    train = job_request(
        "train", {"slurm_partition": "gpu", "gpu": 1, "cpus_per_gpu": 8, "mem_mb": 64000}, 4, "cpu"
    )
    assert (train["cpus"], train["mem_mb"], train["gpus"]) == (8, 64000, 1)
    pair = job_request("pair", {"mem_mb": 8000}, 1, "cpu")
    check_node_sizes([train, pair], nodes)
    big_pair = job_request("pair", {"mem_mb": 32000}, 2, "cpu")
    gpu_on_cpu = job_request("predict", {"slurm_partition": "cpu", "gpu": 1, "cpus_per_gpu": 4}, 4, "cpu")
    with pytest.raises(AfinarError) as err:
        check_node_sizes([train, big_pair, gpu_on_cpu], nodes, "my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: rule pair asks mem_mb=32000") and "\n" not in message
    assert "at most 16000 MB, 8 CPUs, 0 GPUs" in message and "rule predict asks" in message
    assert "rule train" not in message
