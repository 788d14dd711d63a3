"""The parent side of a multi-process run: checks before any process starts, `accelerate launch`, signals.

Only the `finetune train --num-processes N` process runs this; the ranks it starts run finetune.train, and
what they do together (reductions, agreeing to stop, sharded saving) is in finetune.rank.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import RecipeError, RunError

if TYPE_CHECKING:
    from finetune.recipe import Recipe

# The accelerate config each multi-process strategy launches with (a recipe without one gets DDP:
# finetune.recipe.DistributedConfig.multi_process_strategy).
STRATEGY_CONFIGS = {
    "ddp": "ddp.yaml",
    "fsdp": "fsdp_qlora.yaml",
    "zero2": "zero2.yaml",
    "zero3": "zero3.yaml",
}
_DEEPSPEED = ("zero2", "zero3")
# torchrun's agent waits this long for ranks to finish their step and save after a signal before
# it kills them; its default (30 s) is shorter than one step of a large model.
SHUTDOWN_TIMEOUT_S = "120"
_PR_SET_PDEATHSIG = 1
# Set in the ranks' environment: the run was started by `finetune train --num-processes`, whose parent
# reports an interruption (exit 130) itself, so a rank that stopped and saved as asked exits 0 and the
# launcher has no failure to report (a traceback after the status line).
LAUNCHED_ENV = "FINETUNE_LAUNCHED"


def config_dir() -> Path:
    """The packaged copies of recipes/accelerate/*.yaml (the same files; a unit test keeps them equal)."""
    return Path(__file__).parent / "catalog" / "accelerate"


def strategy_config(strategy: str) -> Path:
    """The accelerate config file for a multi-process strategy (ddp, fsdp, zero2, zero3)."""
    if strategy not in STRATEGY_CONFIGS:
        raise RecipeError(
            f"distributed.strategy: expected one of {', '.join(STRATEGY_CONFIGS)}, got {strategy!r}"
        )
    return config_dir() / STRATEGY_CONFIGS[strategy]


def check_combination(
    recipe: Recipe, num_processes: int, has_cuda: bool, gpu_count: int, has_deepspeed: bool,
    source: str = "recipe",
) -> None:
    """Raise a one-line error for a launch that cannot work, before any process starts."""
    strategy = recipe.distributed.strategy
    bits = recipe.quantization.bits
    where = f"{source}: distributed.strategy: {strategy}"
    if num_processes < 2:
        raise RunError(f"--num-processes {num_processes}: expected 2 or more (1 trains without accelerate)")
    if strategy in ("fsdp", *_DEEPSPEED) and not has_cuda:
        # accelerate enables FSDP and DeepSpeed only for GPU process groups: on a CPU it would
        # silently train plain DDP instead, so say so rather than pretend.
        raise RecipeError(f"{where} needs CUDA GPUs (accelerate runs it on GPUs only); on a CPU use ddp")
    if strategy in _DEEPSPEED and not has_deepspeed:
        raise RecipeError(f"{where} needs DeepSpeed: pip install 'finetune[deepspeed]'")
    if bits == 8 and strategy in ("fsdp", "zero3"):
        raise RecipeError(
            f"{where} cannot shard 8-bit weights (stored as int8); use quantization.bits: 4 with fsdp, or ddp"
        )
    if bits == 4 and strategy == "zero3":
        raise RecipeError(
            f"{where} with quantization.bits: 4 is not supported here; use strategy fsdp to shard 4-bit "
            "weights, or quantization.bits: null with zero3"
        )
    if has_cuda and num_processes > gpu_count:
        raise RunError(
            f"--num-processes {num_processes}: only {gpu_count} CUDA GPU{'s' if gpu_count != 1 else ''} "
            "visible (one process per GPU)"
        )


def train_args(argv: list[str]) -> list[str]:
    """The arguments after `train` in a `finetune train ...` command line, minus --num-processes."""
    try:
        start = argv.index("train", 1) + 1
    except ValueError:
        raise RunError("--num-processes: expected a `finetune train RECIPE ...` command line") from None
    rest = argv[start:]
    out: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        if arg.startswith("--num-processes="):
            continue
        out.append(arg)
    return out


def option_value(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in an argument list (None when absent)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def launch_command(
    config_file: Path, num_processes: int, args: list[str], python: str = sys.executable
) -> list[str]:
    """The `accelerate launch` command that runs `python -m finetune train ARGS` on N processes."""
    return [
        python, "-m", "accelerate.commands.launch",
        "--config_file", str(config_file),
        "--num_processes", str(num_processes),
        "--num_machines", "1",
        "--main_process_port", "0",  # a free port: two runs on one machine never collide
        "-m", "finetune", "train", *args,
    ]


def child_env(environ: dict[str, str], num_processes: int, cores: int, has_cuda: bool) -> dict[str, str]:
    """The launcher's environment: cores split evenly over the processes, CPU mode where there is no GPU."""
    env = dict(environ)
    # torchrun would pin every process to 1 thread; N processes sharing the cores evenly is faster.
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // num_processes)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    env[LAUNCHED_ENV] = "1"
    if not has_cuda:
        env["ACCELERATE_USE_CPU"] = "true"  # the trainer then builds a gloo process group
    return env


def _check_run_folder(recipe: Recipe, args: list[str]) -> Path:
    """The run-folder errors `finetune train` would raise, raised once here instead of once per rank; returns
    the run folder."""
    from finetune.runlock import RunLock
    from finetune.runs import CHECKPOINTS, latest_checkpoint, prepare_run_dir, run_dir_for

    # A folder another train is using is said first, as `finetune train` says it (the ranks take the lock).
    probe = RunLock(run_dir_for(recipe, option_value(args, "--output-dir")))
    probe.acquire(create=False)
    probe.release()
    resume = "--resume" in args
    run_dir = prepare_run_dir(
        recipe, option_value(args, "--output-dir"), force="--force" in args, resume=resume, is_main=False
    )
    if resume and latest_checkpoint(run_dir / CHECKPOINTS) is None:
        raise RunError(f"{run_dir}: no checkpoint to resume from (start without --resume)")
    return run_dir


def _die_with_parent() -> None:
    """In the launcher (Linux): get SIGTERM if `finetune` itself is killed, so no run is left orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def run_launcher(cmd: list[str], env: dict[str, str], run_dir: Path | None = None) -> int:
    """Run the launcher, passing SIGINT/SIGTERM to the ranks once (they finish the step and save); return the
    run's exit code (`run_dir`'s summary says how a signalled run ended)."""
    import psutil

    # A session of its own: a Ctrl-C in the terminal reaches only us, and we pass it on once. Otherwise every
    # rank gets it twice (terminal, then launcher) and the second one means "quit now".
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        sig = signal.SIGTERM if signum == signal.SIGHUP else signum
        # The first signal goes to the ranks only: torchrun's agent, signalled, shuts its workers down with
        # warnings and ends in a traceback although they stopped and saved as asked. A second one: every
        # process at once, no save.
        ranks = []
        try:  # the ranks are the agent's own children (their helpers, e.g. data workers, are left alone)
            ranks = psutil.Process(proc.pid).children(recursive=len(received) > 1)
            for child in ranks:
                child.send_signal(sig)
        except psutil.Error:
            pass
        # No rank started yet (a signal while the launcher starts up), or a second signal: the launcher too.
        if (len(received) > 1 or not ranks) and proc.poll() is None:
            proc.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and code != 0:
        return 130  # stopped at once by a second signal, or a rank failed while stopping
    if received and run_dir is not None:
        from finetune.runs import STATUS_EXIT, read_summary

        summary = read_summary(run_dir) or {}
        return STATUS_EXIT.get(str(summary.get("status")), 130)  # "interrupted", or done before the signal
    return code


def launch(recipe_path: str | Path, recipe: Recipe, num_processes: int, argv: list[str]) -> int:
    """Train on N processes through `accelerate launch` with the recipe's strategy; returns the exit code."""
    import torch

    has_cuda = torch.cuda.is_available()
    check_combination(
        recipe, num_processes, has_cuda, torch.cuda.device_count() if has_cuda else 0,
        importlib.util.find_spec("deepspeed") is not None, source=str(recipe_path),
    )
    args = train_args(argv)
    run_dir = _check_run_folder(recipe, args)
    cmd = launch_command(strategy_config(recipe.distributed.multi_process_strategy), num_processes, args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = child_env(dict(os.environ), num_processes, cores, has_cuda)
    return run_launcher(cmd, env, run_dir)
