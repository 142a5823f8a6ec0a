"""The launch tools' configs: defaults for parsers without the plan flags, and every bad value named."""

from __future__ import annotations

import argparse

import pytest

from slime_entropy.launch.arguments import add_plan_arguments, add_ray_wait_arguments
from slime_entropy.launch.config import ClusterWaitConfig, PlanConfig
from slime_entropy.launch.memory import DEFAULT_GPU_MEMORY_GIB, DEFAULT_RESERVE_GIB, GiB
from slime_entropy.launch.ray_cluster import main as ray_cluster_main


def test_plan_config_defaults_without_the_flags_and_from_them():
    assert PlanConfig.from_args(argparse.Namespace()) == PlanConfig(
        gpu_memory_gib=DEFAULT_GPU_MEMORY_GIB, memory_reserve_gib=DEFAULT_RESERVE_GIB
    )
    args = add_plan_arguments(argparse.ArgumentParser()).parse_args(["--plan-gpu-memory-gib", "141"])
    config = PlanConfig.from_args(args)
    assert config.gpu_memory_gib == 141 and config.gpu_memory_bytes == 141 * GiB
    assert config.memory_reserve_bytes == int(DEFAULT_RESERVE_GIB * GiB)


def test_plan_config_names_each_bad_flag():
    with pytest.raises(ValueError) as err:
        PlanConfig(gpu_memory_gib=8, memory_reserve_gib=8)
    assert "--plan-memory-reserve-gib must lie in [0, --plan-gpu-memory-gib 8), got 8" in str(err.value)


def test_cluster_wait_refuses_every_bad_value_at_once(capsys):
    args = add_ray_wait_arguments(argparse.ArgumentParser()).parse_args(
        ["--address", "head", "--nodes", "0", "--gpus-per-node", "-1", "--timeout", "0"]
    )
    with pytest.raises(ValueError) as err:
        ClusterWaitConfig.from_args(args)
    for flag in ("--nodes", "--gpus-per-node", "--timeout", "--address"):
        assert flag in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        ray_cluster_main(["wait", "--address", "head:6379", "--nodes", "0", "--gpus-per-node", "8"])
    assert exit_.value.code == 2 and "--nodes must be >= 1, got 0" in capsys.readouterr().err
