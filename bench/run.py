"""`make bench`: one epoch over the same rows with finetune and with TRL, each arm in its own process.

    python -m bench.run [--rows 160] [--heldout 32] [--data datasets/pirate.jsonl] [--seed 0] [--keep]

Arms: finetune (automatic choices, through the real CLI, padded length-grouped batches), finetune-packed (the
same with packing: true, rows end to end without padding), finetune-packed-compiled (packed, with
training.compile: true), finetune-qlora (4-bit base), trl-defaults (SFTTrainer as shipped, use_cpu on a
CPU) and trl-tuned (the faster of fp32 and bf16 autocast, measured here for a few steps each, without
gradient checkpointing). The orchestrator times every arm from the outside:
it starts the process, notes when each optimizer step's line appears, and samples the process's peak RSS
(VmHWM) and anonymous memory from /proc. Results go to outputs/bench/<time>.json and outputs/bench/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    ARMS,
    BenchSettings,
    compile_line,
    device_summary,
    feature_line,
    final_lines,
    format_table,
    matmul_peak_gflops,
    packing_line,
    parameter_count,
    step_rates,
    write_rows,
)
from finetune import atomic
from finetune.errors import FinetuneError
from finetune.paths import outputs_dir

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.02


def _read_new_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines appended to `path` since byte `offset`, and the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except OSError:
        return [], offset
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
    records = []
    for line in chunk[:end].splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records, offset + end


def _memory_kb(pid: int) -> tuple[int, int]:
    """A process's peak RSS so far (VmHWM) and its resident anonymous memory now (RssAnon), in KiB.

    VmHWM belongs to the process image: wait4's ru_maxrss does not, since Linux carries it over from the
    parent across fork and exec. RssAnon leaves out file pages, such as a memory-mapped checkpoint.
    """
    found = {"VmHWM": 0, "RssAnon": 0}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key = line.split(":", 1)[0]
                if key in found:
                    found[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found["VmHWM"], found["RssAnon"]


def _reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux: '5' into clear_refs), so that what follows the
    first step can be told from the peak while loading (a CPU quantising a checkpoint peaks there)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_process(cmd: list[str], env: dict[str, str], steps_file: Path, log_file: Path) -> dict[str, Any]:
    """Run one arm; time each step line as it appears; return exit code, wall, peak RSS and step rates."""
    start = time.monotonic()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    points: list[tuple[float, int, int]] = []
    offset, hwm_kb, anon_kb, steps_hwm_kb, reset = 0, 0, 0, 0, False
    while True:
        hwm, anon = _memory_kb(proc.pid)
        hwm_kb, anon_kb = max(hwm_kb, hwm), max(anon_kb, anon)
        if reset:
            steps_hwm_kb = max(steps_hwm_kb, hwm)
        elif points:
            reset = _reset_peak(proc.pid)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.monotonic() - start
        records, offset = _read_new_lines(steps_file, offset)
        for record in records:
            if "tokens" in record and record.get("step") and (not points or record["step"] > points[-1][1]):
                points.append((now, int(record["step"]), int(record["tokens"])))
        if pid:
            break
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": time.monotonic() - start,
        "peak_rss_mb": (hwm_kb or usage.ru_maxrss) / 1024,
        "peak_anon_mb": anon_kb / 1024 or None,
        "peak_rss_steps_mb": steps_hwm_kb / 1024 or None,
        "steps": len(points),
        **step_rates(points),
    }


def _log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of an arm's log, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Bench:
    """The work folder, the shared settings and the environment every arm runs in."""

    def __init__(self, settings: BenchSettings, work: Path, cuda: bool) -> None:
        self.settings = settings
        self.work = work
        self.cuda = cuda
        self.settings_path = work / "settings.json"
        settings.save(self.settings_path)
        self.env = {
            **os.environ, "FINETUNE_OUTPUTS": str(work / "runs"), "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        }

    def finetune_arm(self, name: str, bits: int | None, packing: bool, compile: bool = False) -> dict[str, Any]:
        """finetune through its real CLI (`python -m finetune train`), automatic precision and the rest."""
        recipe_path = self.work / f"{name}.yaml"
        recipe = self.settings.recipe_data(f"bench-{name}", bits, packing=packing, compile=compile)
        recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        run_dir = self.work / "runs" / name
        cmd = [sys.executable, "-m", "finetune", "train", str(recipe_path), "--output-dir", str(run_dir)]
        cmd.append("--force")
        result = run_process(cmd, self.env, run_dir / "metrics.jsonl", self.work / f"{name}.log")
        summary = _read_json(run_dir / "summary.json")
        result.update(precision=summary.get("precision"), checkpointing=summary.get("gradient_checkpointing"),
                      adapter=str(run_dir / "adapter"), bits=bits, packing=summary.get("packing"))
        if self.cuda:
            lines = atomic.read_jsonl(run_dir / "metrics.jsonl")
            result["peak_allocated_mb"] = summary.get("peak_memory_mb")
            result["peak_reserved_mb"] = max((r.get("peak_reserved_mb") or 0 for r in lines), default=None)
        return result

    def trl_arm(
        self, name: str, mode: str, precision: str | None = None, max_steps: int | None = None
    ) -> dict[str, Any]:
        """TRL's SFTTrainer in its own process (bench.arm_trl)."""
        out = self.work / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "bench.arm_trl", str(self.settings_path), str(out), "--mode", mode]
        cmd += ["--precision", precision] if precision else []
        cmd += ["--max-steps", str(max_steps)] if max_steps else []
        result = run_process(cmd, self.env, out / "steps.jsonl", self.work / f"{name}.log")
        arm = _read_json(out / "result.json")
        result.update(precision=arm.get("precision"), checkpointing=arm.get("checkpointing"),
                      adapter=str(out / "adapter"), bits=None)
        if self.cuda:
            result.update({k: arm.get(k) for k in ("peak_allocated_mb", "peak_reserved_mb")})
        return result

    def trl_tuned(self, probe_steps: int) -> dict[str, Any]:
        """Measure fp32 and bf16 autocast for a few steps each (no checkpointing); train with the faster."""
        probes = {}
        for precision in ("fp32", "bf16"):
            probe = self.trl_arm(f"trl-probe-{precision}", "tuned", precision, max_steps=probe_steps)
            probes[precision] = probe.get("tokens_per_s") or 0.0
            print(f"  trl-tuned probe {precision}: {probes[precision]:.0f} tokens/s over {probe_steps} steps",
                  flush=True)
        best = max(probes, key=probes.get)
        result = self.trl_arm("trl-tuned", "tuned", best)
        result["probe_tokens_per_s"] = probes
        return result

    def heldout(self, results: list[dict[str, Any]]) -> dict[str, float | None]:
        """Every arm's held-out loss, from its saved adapter, in one fresh process."""
        arms = [{"arm": r["arm"], "adapter": r["adapter"], "bits": r["bits"]} for r in results]
        arms_path, out_path = self.work / "heldout-arms.json", self.work / "heldout.json"
        arms_path.write_text(json.dumps(arms))
        cmd = [sys.executable, "-m", "bench.heldout", str(self.settings_path), str(arms_path), str(out_path)]
        log_path = self.work / "heldout.log"
        with open(log_path, "w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        code = done.returncode
        if code != 0:
            print(f"held-out evaluation failed (exit {code}):\n{_log_tail(log_path)}", flush=True)
            return {}
        return _read_json(out_path)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or torn."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    """Run every arm, print the device, peaks, table and the three summary lines; save the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "datasets" / "pirate.jsonl"), help="JSONL rows")
    parser.add_argument("--rows", type=int, default=160, help="training rows (one epoch)")
    parser.add_argument("--heldout", type=int, default=32, help="held-out rows for the final loss")
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct", help="base model (recipe syntax)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order and of the row choice")
    parser.add_argument("--probe-steps", type=int, default=4, help="steps per precision probe of trl-tuned")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of arms")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (runs, logs)")
    args = parser.parse_args(argv)
    try:
        return _bench(args)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    """The body of main: set up, run the arms in a seeded order, evaluate, report."""
    from finetune.models import resolve_base_model

    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise FinetuneError(f"--arms: unknown arm {unknown[0]!r} (known: {', '.join(ARMS)})")
    device = device_summary()
    print(f"device: {device['device']}  {device['name']}", flush=True)
    print(f"features: {feature_line(device)}", flush=True)
    cuda = device["device"] == "cuda"
    peaks = {p: matmul_peak_gflops(p, device["device"]) for p in ("fp32", "bf16")}
    print("matmul peak: " + "  ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()), flush=True)

    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    try:
        train_path, heldout_path = write_rows(args.data, args.rows, args.heldout, args.seed, work)
        settings = BenchSettings.with_finetune_defaults(
            args.model, str(train_path), str(heldout_path), args.batch_size, args.max_length
        )
        parameters = parameter_count(resolve_base_model(args.model))
        bench = Bench(settings, work, cuda)
        order = list(arms)
        random.Random(args.seed).shuffle(order)
        print(f"rows: {args.rows} training + {args.heldout} held-out from {args.data}; "
              f"batch {args.batch_size}; model {args.model} ({parameters / 1e6:.0f}M parameters)", flush=True)
        print(f"order (seed {args.seed}): {', '.join(order)}", flush=True)
        results = []
        for name in order:
            if name in ("finetune", "finetune-packed"):
                result = bench.finetune_arm(name, None, packing=name == "finetune-packed")
            elif name == "finetune-packed-compiled":
                result = bench.finetune_arm(name, None, packing=True, compile=True)
            elif name == "finetune-qlora":
                result = bench.finetune_arm(name, 4, packing=False)
            elif name == "trl-defaults":
                result = bench.trl_arm(name, "defaults")
            else:
                result = bench.trl_tuned(args.probe_steps)
            result["arm"] = name
            results.append(result)
            if result["returncode"] != 0:
                print(f"  {name}: exit {result['returncode']}\n{_log_tail(work / f'{name}.log')}", flush=True)
            else:
                print(f"  {name}: {result['steps']} steps, {result.get('tokens_per_s') or 0:.0f} tokens/s, "
                      f"{result['precision']}, wall {result['wall_s']:.0f} s", flush=True)
        losses = bench.heldout([r for r in results if r["returncode"] == 0])
        for r in results:
            r["heldout_loss"] = losses.get(r["arm"])
            if not cuda:
                r.pop("peak_allocated_mb", None)
        results.sort(key=lambda r: ARMS.index(r["arm"]))
        ours = next((r for r in results if r["arm"] == "finetune"), {})
        peak = peaks.get(ours.get("precision") or "", None)
        print("precision per arm: " + ", ".join(f"{r['arm']} {r.get('precision') or '-'}" for r in results))
        if peak:
            print(f"matmul peak of finetune's precision ({ours['precision']}): {peak:.0f} GFLOP/s; "
                  f"model FLOP/s taken as 4 x {parameters / 1e6:.0f}M parameters x tokens/s")
        lines = final_lines(results, parameters, peak)
        _save(args, device, peaks, parameters, order, settings, results, lines)
        print()
        print(format_table(results, cuda))
        if "finetune-packed" in arms:
            print(packing_line(results))
        if "finetune-packed-compiled" in arms:
            print(compile_line(results, parameters, peak))
        print("\n".join(lines))
        return 0 if all(r["returncode"] == 0 for r in results) else 1
    finally:
        if args.keep:
            print(f"(work folder kept: {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _save(args: argparse.Namespace, device: dict, peaks: dict, parameters: int, order: list[str],
          settings: BenchSettings, results: list[dict], lines: list[str]) -> Path:
    """Write outputs/bench/<time>.json and latest.json."""
    from finetune.runs import library_versions

    folder = outputs_dir() / "bench"
    stamp = datetime.now().astimezone()
    record = {
        "finished_at": stamp.isoformat(timespec="seconds"), "device": device, "matmul_peak_gflops": peaks,
        "parameters": parameters, "order": order, "seed": args.seed, "rows": args.rows,
        "heldout": args.heldout, "data": args.data,
        "settings": {k: v for k, v in settings.__dict__.items() if not k.endswith("_path")},
        "results": results, "summary_lines": lines, "versions": library_versions(),
    }
    path = folder / f"{stamp.strftime('%Y%m%d-%H%M%S')}.json"
    atomic.write_json(path, record)
    atomic.write_json(folder / "latest.json", record)
    return path


if __name__ == "__main__":
    sys.exit(main())
