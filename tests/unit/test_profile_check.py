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
