"""Run telemetry: metrics lines, memory, NVML power and energy, cost so far, progress display."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from finetune.recipe import Recipe


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak memory so far: CUDA allocated and reserved, or the process's peak RSS on a CPU."""
    if device == "cuda":
        import torch

        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        }
    # VmHWM is this process image's own high-water mark. ru_maxrss is not: Linux carries it across exec, so
    # a process started from a large parent (a test runner, a notebook) would report the parent's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_memory_mb": int(line.split()[1]) / 1024}
    except (OSError, ValueError, IndexError):
        pass
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


PHASES = ("load", "train", "eval", "save")


def reset_peak_memory(device: str) -> bool:
    """Restart the peak counter at the current usage; False where the kernel does not allow it."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    # Writing 5 to clear_refs sets VmHWM to the current RSS (Linux >= 4.0); a process may do it to itself.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PhaseMemory:
    """The peak memory of each phase of a run (load, train, eval, save): the counter restarts per phase.

    Each phase's figure is measured like peak_memory_mb (CUDA max allocated, or the process's peak RSS on a
    CPU), so it includes whatever the earlier phases left resident (the model, during training). A phase
    entered more than once (training, evaluating, training again) keeps its largest peak. Where the peak
    cannot be restarted, a phase's figure is the peak since the first phase that could.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peaks: dict[str, float] = {}
        self.current: str | None = None

    def start(self, phase: str) -> None:
        """Close the current phase (recording its peak) and start measuring `phase`."""
        self.stop()
        reset_peak_memory(self.device)
        self.current = phase

    def stop(self) -> None:
        """Record the current phase's peak; the next start() begins a new phase."""
        if self.current is not None:
            peak = peak_memory_mb(self.device)["peak_memory_mb"]
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), peak)
            self.current = None

    def highest(self) -> float:
        """The largest peak of the phases closed so far (0 before any)."""
        return max(self.peaks.values(), default=0.0)

    def callback(self) -> Any:
        """A TrainerCallback that measures the evaluations inside trainer.train() as the eval phase."""
        from transformers import TrainerCallback

        phases = self

        class EvalPhase(TrainerCallback):
            """Switches to "eval" when the trainer is about to evaluate, and back when it has."""

            back_to: str | None = None

            def _maybe_start(self, control: Any) -> None:
                # The default flow callback (called first) has just decided whether an evaluation follows.
                if control.should_evaluate and phases.current not in (None, "eval"):
                    self.back_to = phases.current
                    phases.start("eval")

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                self._maybe_start(control)

            def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
                self._maybe_start(control)

            def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
                if self.back_to is not None:
                    phases.start(self.back_to)
                    self.back_to = None

        return EvalPhase()

    def by_phase(self) -> dict[str, float | None]:
        """Each phase's peak in MB, rounded (None for a phase this run did not reach)."""
        self.stop()
        return {p: round(self.peaks[p], 1) if p in self.peaks else None for p in PHASES}


class NvmlMonitor:
    """Power, energy and utilisation of the GPUs a process uses, via NVML; silent where there is none."""

    def __init__(self, device_index: int | None = None) -> None:
        self.handle: Any = None
        self._nvml: Any = None
        self._start_mj: float | None = None
        self._last: tuple[float, float] | None = None  # (time, watts) for integration without a counter
        self._energy_j = 0.0
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device_index if device_index is not None else int(os.environ.get("LOCAL_RANK", 0))
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # no NVIDIA driver, no pynvml, no GPU: CPU runs simply omit these fields
            self.handle = None
            return
        try:
            self._start_mj = float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # older GPUs have no energy counter: integrate power samples instead
            self._start_mj = None

    @property
    def available(self) -> bool:
        """Whether NVML answers for this process's GPU."""
        return self.handle is not None

    def sample(self) -> dict[str, float]:
        """Power (W), energy since start (Wh) and utilisation (%); {} where NVML is absent."""
        if not self.available:
            return {}
        nvml = self._nvml
        out: dict[str, float] = {}
        now = time.monotonic()
        try:
            watts = nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            out["power_w"] = watts
            if self._last is not None:
                self._energy_j += (now - self._last[0]) * (watts + self._last[1]) / 2
            self._last = (now, watts)
        except Exception:
            pass
        try:
            if self._start_mj is not None:
                used_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - self._start_mj
                out["energy_wh"] = used_mj / 3.6e6
            elif self._last is not None:
                out["energy_wh"] = self._energy_j / 3600.0
        except Exception:
            pass
        try:
            out["gpu_util"] = float(nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except Exception:
            pass
        return out


def eta_seconds(step: int, max_steps: int, seconds_per_step: float) -> float | None:
    """Seconds left at the current pace (None before the pace is known)."""
    if step <= 0 or max_steps <= 0 or seconds_per_step <= 0:
        return None
    return max(0, max_steps - step) * seconds_per_step


def format_duration(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12s' or '?'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass
class Ledger:
    """Running totals of a run, carried across resumes through each checkpoint."""

    elapsed_before_s: float = 0.0  # wall time spent in earlier (interrupted) sessions of this run
    energy_before_wh: float = 0.0
    peak_memory_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for a checkpoint."""
        return json.dumps(self.__dict__)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read a ledger written into a checkpoint (empty if absent)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def carry_summary(self, summary: dict[str, Any] | None) -> None:
        """On --resume: take the earlier sessions' wall time and energy (and the run's start) from the run's
        summary.json.

        A checkpoint's ledger stops the clock and the energy meter when the checkpoint is written; the session
        then went on (more steps, the stop's saves, an evaluation, the summary), and its summary, written last,
        holds more of it. Whichever is larger counts: a session killed without a summary leaves an older one.
        """
        if not summary:
            return
        wall = summary.get("wall_time_s")
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            self.elapsed_before_s = max(self.elapsed_before_s, float(wall))
        energy = summary.get("energy_wh")  # GPU runs only (NVML); null on a CPU
        if isinstance(energy, (int, float)) and not isinstance(energy, bool):
            self.energy_before_wh = max(self.energy_before_wh, float(energy))
        if summary.get("started_at"):  # checkpoints written before the ledger carried the run's start
            self.extra.setdefault("started_at", summary["started_at"])

    def run_started(self, session_started: datetime) -> datetime:
        """When the run's first session began (carried in every checkpoint); `session_started` for a new run."""
        recorded = self.extra.setdefault("started_at", session_started.isoformat())
        try:
            return datetime.fromisoformat(recorded)
        except (TypeError, ValueError):
            return session_started


class Telemetry:
    """Builds each metrics line (tokens/s, ETA, memory, energy, cost) and shows progress."""

    def __init__(
        self, recipe: Recipe, run_dir: Path, device: str, hardware_name: str, num_processes: int = 1,
        is_main: bool = True, stream: TextIO | None = None, phases: PhaseMemory | None = None,
        start: float | None = None,
    ) -> None:
        """`start`: the session's time.monotonic() at the command's start (loading is part of the run's time)."""
        self.recipe = recipe
        self.phases = phases or PhaseMemory(device)
        self.run_dir = run_dir
        self.device = device
        self.hardware_name = hardware_name
        self.num_processes = num_processes
        self.is_main = is_main
        self.stream = stream or sys.stderr
        self.nvml = NvmlMonitor() if device == "cuda" else NvmlMonitor.__new__(NvmlMonitor)
        if device != "cuda":
            self.nvml.handle = None
        self.ledger = Ledger()
        # One clock per session, from the command's start, as the time budget and time_to_first_step_s count.
        self.start = time.monotonic() if start is None else start
        self.first_step_at: float | None = None
        self.last_log: tuple[float, int, int] | None = None  # (time, step, tokens)
        self.max_steps = 0
        self.last_line: dict[str, Any] = {}
        self.last_eval_loss: float | None = None
        self._progress: Any = None
        self._task: Any = None
        self._last_plain = 0.0

    # --- figures -----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Wall time of the whole run so far, earlier sessions included."""
        return self.ledger.elapsed_before_s + time.monotonic() - self.start

    def begin_training(self, step: int, tokens: int) -> None:
        """Training starts (or resumes) now at `step` with `tokens` seen: the first line's pace counts from here."""
        self.last_log = (time.monotonic(), step, tokens)

    def energy_wh(self, sample: dict[str, float]) -> float | None:
        """Energy of the whole run so far over all processes, where measured."""
        if "energy_wh" not in sample:
            return None
        return self.ledger.energy_before_wh + sample["energy_wh"] * self.num_processes

    def cost(self, seconds: float, energy_wh: float | None, utilisation: float | None) -> dict[str, Any] | None:
        """Cost for `seconds` of this run from the recipe's cost section (None when it has none)."""
        section = self.recipe.cost
        if section.hourly_rate is None and section.electricity is None:
            return None
        from finetune import cost as cost_mod

        power = section.power_w
        if power is None and section.gpu:
            from finetune.catalog import find_gpu, load_gpus

            power = find_gpu(section.gpu, load_gpus()).power_w
        return cost_mod.run_cost(
            section, seconds, energy_wh, power, utilisation, section.currency, num_gpus=self.num_processes
        )

    def line(self, step: int, epoch: float, tokens: int, logs: dict[str, Any], max_steps: int) -> dict[str, Any]:
        """One metrics.jsonl record from the trainer's logs plus our own figures."""
        now = time.monotonic()
        self.max_steps = max_steps
        if self.last_log is None:  # begin_training not called (a Telemetry used outside the trainer)
            self.last_log = (self.start, 0, 0)
        t0, s0, k0 = self.last_log
        steps = max(1, step - s0)
        sec_per_step = (now - t0) / steps
        tokens_per_s = (tokens - k0) / max(1e-9, now - t0)
        self.last_log = (now, step, tokens)
        memory = peak_memory_mb(self.device)
        # The counter restarts per phase (PhaseMemory): this session's peak so far includes the closed phases'.
        memory["peak_memory_mb"] = max(memory["peak_memory_mb"], self.phases.highest())
        self.ledger.peak_memory_mb = max(self.ledger.peak_memory_mb, memory["peak_memory_mb"])
        sample = self.nvml.sample() if self.nvml.available else {}
        elapsed = self.elapsed()
        eta = eta_seconds(step, max_steps, sec_per_step)
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(epoch, 4),
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "tokens_per_s": round(tokens_per_s, 2),
            "seconds_per_step": round(sec_per_step, 4),
            "elapsed_s": round(elapsed, 2),
            "eta_s": None if eta is None else round(eta, 1),
            **{k: round(v, 1) for k, v in memory.items()},
        }
        if sample:
            record["power_w"] = round(sample.get("power_w", 0.0), 1)
            record["gpu_util"] = sample.get("gpu_util")
            record["energy_wh"] = self.energy_wh(sample)
        utilisation = (sample.get("gpu_util") or 0) / 100 if sample else None
        so_far = self.cost(elapsed, record.get("energy_wh"), utilisation)
        if so_far is not None:
            record["cost"] = so_far
            if eta is not None and elapsed > 0:
                projected_energy = None if record.get("energy_wh") is None else (
                    record["energy_wh"] * (elapsed + eta) / elapsed
                )
                record["cost_projected"] = self.cost(elapsed + eta, projected_energy, utilisation)
        self.last_line = record
        return record

    # --- display -----------------------------------------------------------------------------

    def start_progress(self, max_steps: int, initial_step: int = 0) -> None:
        """A rich progress bar on a terminal; plain periodic lines elsewhere (CI, nohup, logs)."""
        self.max_steps = max_steps
        if not self.is_main or not self.stream.isatty():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from finetune.console import err_console

        self._progress = Progress(  # on stderr, like the plain lines: stdout is for results
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False, console=err_console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=max_steps, completed=initial_step, info="")

    def show(self, record: dict[str, Any]) -> None:
        """Update the bar, or print a plain line at most every 10 seconds (and at the end)."""
        if not self.is_main:
            return
        parts = [f"loss {record['loss']:.4f}" if record.get("loss") is not None else ""]
        if record.get("eval_loss") is not None:
            parts.append(f"eval {record['eval_loss']:.4f}")
        parts += [f"{record['tokens_per_s']:.0f} tok/s", f"peak {record['peak_memory_mb']:.0f} MB"]
        if record.get("cost"):
            from finetune.cost import format_money

            parts.append(format_money(record["cost"]["amount"], record["cost"]["currency"]))
        info = "  ".join(p for p in parts if p)
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], info=info)
            return
        now = time.monotonic()
        if now - self._last_plain >= 10 or record["step"] >= self.max_steps:
            self._last_plain = now
            print(
                f"step {record['step']}/{self.max_steps}  {info}  eta {format_duration(record.get('eta_s'))}",
                file=self.stream, flush=True,
            )

    def note(self, text: str) -> None:
        """One line between the progress updates (main process only)."""
        if not self.is_main:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def stop_progress(self) -> None:
        """Close the progress bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
