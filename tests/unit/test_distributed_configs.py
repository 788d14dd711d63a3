"""The accelerate strategy configs, the pure parts of the multi-process launcher, and in-rank helpers."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

from finetune import launch, rank
from finetune.errors import FinetuneError, RecipeError, RunError
from finetune.recipe import DistributedConfig, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "accelerate"
EXPECTED_TYPES = {
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp_qlora.yaml": DistributedType.FSDP,
    "zero2.yaml": DistributedType.DEEPSPEED,
    "zero3.yaml": DistributedType.DEEPSPEED,
}


def _recipe(**sections: dict) -> object:
    return parse_recipe({"name": "t", "dataset": {"path": "d.jsonl"}, **sections})


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_every_config_loads_with_accelerates_own_loader(name: str) -> None:
    config = load_config_from_file(str(RECIPES / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED_TYPES[name]
    assert config.num_machines == 1 and config.num_processes == 2


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_every_nested_key_is_a_launch_option(name: str) -> None:
    # accelerate's loader accepts any key inside fsdp_config/deepspeed_config and the launcher then
    # ignores a misspelt one silently; here each must name a real `accelerate launch` option.
    config = load_config_from_file(str(RECIPES / name))
    options = vars(launch_command_parser().parse_args(["script.py"]))
    for key in {**config.fsdp_config, **config.deepspeed_config}:
        assert key in options, f"{name}: {key} is not an accelerate launch option"


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_packaged_copies_equal_the_recipes_folder(name: str) -> None:
    assert (launch.config_dir() / name).read_text() == (RECIPES / name).read_text()
    assert (RECIPES / name).read_text().startswith("#"), "a config starts with a comment saying how to run it"


def test_fsdp_qlora_config_follows_the_qlora_recipe() -> None:
    fsdp = load_config_from_file(str(RECIPES / "fsdp_qlora.yaml"))
    assert fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp.fsdp_config["fsdp_sync_module_states"] is True  # required by cpu_ram_efficient_loading
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is False
    assert fsdp.fsdp_config["fsdp_version"] == 1


def test_deepspeed_configs_set_their_stage() -> None:
    zero2 = load_config_from_file(str(RECIPES / "zero2.yaml")).deepspeed_config
    zero3 = load_config_from_file(str(RECIPES / "zero3.yaml")).deepspeed_config
    assert zero2["zero_stage"] == 2
    assert zero3["zero_stage"] == 3 and zero3["zero3_init_flag"] is True
    for config in (zero2, zero3):  # left to the trainer ("auto") so they always match the recipe
        assert "gradient_accumulation_steps" not in config and "gradient_clipping" not in config


def test_every_recipe_strategy_has_a_config() -> None:
    strategies = typing.get_args(DistributedConfig.model_fields["strategy"].annotation)
    multi = {DistributedConfig(strategy=strategy).multi_process_strategy for strategy in strategies}
    assert multi == set(launch.STRATEGY_CONFIGS)
    for strategy in multi:
        assert launch.strategy_config(strategy).is_file()


def test_slurm_example_launches_with_the_multi_node_options() -> None:
    text = (RECIPES / "slurm.sbatch").read_text()
    options = ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port")
    for option in options:
        assert option in text


@pytest.mark.parametrize(
    ("sections", "n", "cuda", "gpus", "deepspeed", "error", "fragment"),
    [
        ({}, 2, False, 0, False, None, None),  # strategy none on a CPU: DDP over gloo
        ({"distributed": {"strategy": "ddp"}}, 2, True, 2, False, None, None),
        ({"distributed": {"strategy": "fsdp"}}, 4, True, 4, False, None, None),
        ({"distributed": {"strategy": "zero2"}}, 2, True, 2, True, None, None),
        ({"distributed": {"strategy": "zero3"}, "quantization": {"bits": None}}, 2, True, 2, True,
         None, None),
        ({"distributed": {"strategy": "fsdp"}}, 2, False, 0, False, RecipeError, "needs CUDA GPUs"),
        ({"distributed": {"strategy": "fsdp"}, "quantization": {"bits": None}}, 2, False, 0, False,
         RecipeError, "needs CUDA GPUs"),
        ({"distributed": {"strategy": "zero2"}}, 2, False, 0, True, RecipeError, "needs CUDA GPUs"),
        ({"distributed": {"strategy": "zero2"}}, 2, True, 2, False, RecipeError, "finetune[deepspeed]"),
        ({"distributed": {"strategy": "fsdp"}, "quantization": {"bits": 8}}, 2, True, 2, False,
         RecipeError, "8-bit"),
        ({"distributed": {"strategy": "zero3"}, "quantization": {"bits": 8}}, 2, True, 2, True,
         RecipeError, "8-bit"),
        ({"distributed": {"strategy": "zero3"}}, 2, True, 2, True, RecipeError, "use strategy fsdp"),
        ({"distributed": {"strategy": "ddp"}}, 4, True, 2, False, RunError, "only 2 CUDA GPUs"),
        ({}, 2, True, 1, False, RunError, "only 1 CUDA GPU visible"),
        ({}, 1, False, 0, False, RunError, "expected 2 or more"),
    ],
)
def test_check_combination(
    sections: dict, n: int, cuda: bool, gpus: int, deepspeed: bool, error: type | None, fragment: str | None
) -> None:
    recipe = _recipe(**sections)
    if error is None:
        launch.check_combination(recipe, n, cuda, gpus, deepspeed, source="r.yaml")
        return
    with pytest.raises(error) as caught:
        launch.check_combination(recipe, n, cuda, gpus, deepspeed, source="r.yaml")
    assert issubclass(error, FinetuneError)
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_check_combination_names_the_recipe_file_and_key() -> None:
    with pytest.raises(RecipeError, match=r"^r\.yaml: distributed\.strategy: fsdp "):
        launch.check_combination(_recipe(distributed={"strategy": "fsdp"}), 2, False, 0, False, "r.yaml")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["finetune", "train", "r.yaml", "--num-processes", "2"], ["r.yaml"]),
        (["/x/finetune", "train", "r.yaml", "--num-processes=2", "--max-steps", "5"],
         ["r.yaml", "--max-steps", "5"]),
        (["python -m finetune", "train", "--num-processes", "3", "r.yaml", "--set", "a.b=1", "--resume"],
         ["r.yaml", "--set", "a.b=1", "--resume"]),
    ],
)
def test_train_args_drop_only_num_processes(argv: list[str], expected: list[str]) -> None:
    assert launch.train_args(argv) == expected


def test_train_args_needs_a_train_command() -> None:
    with pytest.raises(RunError):
        launch.train_args(["finetune", "runs"])


def test_option_value_reads_both_spellings() -> None:
    assert launch.option_value(["r", "--output-dir", "out"], "--output-dir") == "out"
    assert launch.option_value(["r", "--output-dir=o2"], "--output-dir") == "o2"
    assert launch.option_value(["r", "--force"], "--output-dir") is None


def test_launch_command_runs_the_module_through_accelerate() -> None:
    cmd = launch.launch_command(Path("c/ddp.yaml"), 2, ["r.yaml", "--max-steps", "3"], python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == "c/ddp.yaml"
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-6:] == ["-m", "finetune", "train", "r.yaml", "--max-steps", "3"]
    assert "--cpu" not in cmd  # accelerate's --cpu starts a single process


def test_launch_command_parses_with_accelerates_own_parser() -> None:
    cmd = launch.launch_command(launch.strategy_config("ddp"), 2, ["r.yaml"], python="py")
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.num_processes == 2 and args.module and args.training_script == "finetune"
    assert args.training_script_args == ["train", "r.yaml"]


@pytest.mark.parametrize(("cores", "n", "threads"), [(2, 2, "1"), (16, 2, "8"), (16, 3, "5"), (2, 4, "1")])
def test_child_env_splits_cores_over_processes(cores: int, n: int, threads: str) -> None:
    env = launch.child_env({"PATH": "/bin"}, n, cores, has_cuda=True)
    assert env["OMP_NUM_THREADS"] == threads
    assert env["PATH"] == "/bin" and "ACCELERATE_USE_CPU" not in env


def test_child_env_keeps_the_users_thread_count_and_marks_cpu_runs() -> None:
    env = launch.child_env({"OMP_NUM_THREADS": "7"}, 2, 16, has_cuda=False)
    assert env["OMP_NUM_THREADS"] == "7"
    assert env["ACCELERATE_USE_CPU"] == "true"
    assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) > 30  # torchrun's default kills ranks mid-save


@pytest.mark.parametrize(
    ("strategy", "n", "expected"),
    [("none", 1, "none"), ("fsdp", 1, "none"), ("none", 2, "ddp"), ("zero3", 4, "zero3")],
)
def test_effective_strategy(strategy: str, n: int, expected: str) -> None:
    assert DistributedConfig(strategy=strategy).effective_strategy(n) == expected


def test_reduce_max_is_the_identity_without_a_process_group() -> None:
    assert rank.reduce_max([1.5, 2.0]) == [1.5, 2.0]


def test_cost_and_energy_count_every_gpu(tmp_path: Path) -> None:
    from finetune.telemetry import Telemetry

    recipe = _recipe(cost={"hourly_rate": {"amount": 2.0, "currency": "USD"}})
    one = Telemetry(recipe, tmp_path, "cpu", "cpu", num_processes=1)
    four = Telemetry(recipe, tmp_path, "cpu", "cpu", num_processes=4)
    assert one.cost(3600, None, None)["amount"] == pytest.approx(2.0)
    assert four.cost(3600, None, None)["amount"] == pytest.approx(8.0)  # price per GPU-hour x N
    # NVML measures the main rank's GPU; the run's energy is that times N (ranks do the same work).
    assert four.energy_wh({"energy_wh": 10.0}) == pytest.approx(40.0)


# Pairs of (rank 0's reason, rank 1's reason) and the reason both must agree on.
AGREE_CASES = [((None, "time_budget"), "time_budget"), (("interrupted", "diverged"), "diverged"),
               (("time_budget", "interrupted"), "interrupted"), ((None, None), None)]


def _agree_worker(rank_index: int, port: int, out: str) -> None:
    """One gloo rank: what agree_on_stop returns for this rank's reason in each case, one line each."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_index, world_size=2)
    try:
        agreed = [str(rank.agree_on_stop(reasons[rank_index])) for reasons, _ in AGREE_CASES]
        Path(out, f"rank{rank_index}").write_text("\n".join(agreed))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_the_most_severe_stop_reason(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_agree_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    expected = [str(agreed) for _, agreed in AGREE_CASES]
    assert [(tmp_path / f"rank{i}").read_text().splitlines() for i in range(2)] == [expected, expected]
    assert rank.agree_on_stop("time_budget") == "time_budget"  # one process: its own reason
