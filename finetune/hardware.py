"""What the machine can do: device, CPU features, measured matmul speed, and the choices that follow."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from finetune import atomic
from finetune.paths import finetune_home

# Longest padded batch that uses torch's matmul attention kernel on a CPU in bf16: up to ~160 tokens the
# flash kernel was ~1.7x slower there (docs/bench.md); the matmul path keeps the L x L attention weights for
# backward, so longer batches stay on flash. Training picks its kernel by it and the estimate counts memory by it.
MATH_ATTENTION_MAX_WIDTH = 160


@dataclass(frozen=True)
class Hardware:
    """The device a run trains on and the facts its automatic choices are made from."""

    device: str  # "cuda" or "cpu"
    name: str  # GPU or CPU model
    features: tuple[str, ...]  # CPU flags that matter (amx_bf16, avx512_bf16, avx2) or GPU capability
    memory_gb: float  # GPU memory, or system RAM on a CPU
    bf16_fast: bool  # bf16 matmuls beat fp32 here (measured on a CPU)
    gflops: dict[str, float]  # measured matmul peak per precision ("fp32", "bf16"), where measured

    def to_dict(self) -> dict:
        """A JSON-ready view, for summaries and benchmarks."""
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> tuple[str, ...]:
    """The CPU flags that decide precision: amx_bf16, avx512_bf16, avx512f, avx2."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags)


def measure_matmul_gflops(dtype_name: str, size: int = 512, seconds: float = 0.25) -> float:
    """Measured GFLOP/s of a square matmul in fp32 or bf16 on the CPU."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def speed_cache_key() -> str:
    """What the cached matmul speeds hold for: the CPU, torch, and the instruction sets its kernels may use.

    ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can limit torch to AVX2 kernels on an AVX-512 CPU, where bf16
    then runs emulated (~80x slower than fp32 on the AMD EPYC here): speeds measured without the limit must
    not choose the precision under it. Keyed without the thread count: every rank of a multi-process run must
    make the same choice.
    """
    import torch

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return f"{cpu_model()}|{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}|{isa}"


def machine_key() -> str:
    """This machine's device, torch version and usable kernels: a measured speed holds only where it was measured.

    The training estimate's calibration and compare's time budget key what they learn by it.
    """
    import torch

    hw = detect()
    # On a CPU, speed_cache_key names the CPU, torch and the instruction sets torch may use (AVX2 only, or more).
    return f"cuda|{hw.name}|{torch.__version__}" if hw.device == "cuda" else f"cpu|{speed_cache_key()}"


def _cpu_speed_cache() -> dict[str, float]:
    """Measure fp32 and bf16 matmul speed once per speed_cache_key() (cached on disk)."""
    key = speed_cache_key()
    path = finetune_home() / "hardware.json"
    try:
        cached = json.loads(path.read_text())
        gflops = cached["gflops"] if cached.get("key") == key else None
        # A cache cut short or hand-edited is measured again, never trusted into a wrong precision.
        if all(isinstance(gflops.get(n), (int, float)) and gflops[n] > 0 for n in ("fp32", "bf16")):
            return {n: float(gflops[n]) for n in ("fp32", "bf16")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    # Best of three short runs: a neighbour's burst of work must not stick in the cache as our speed.
    # bf16 on a CPU without native support is emulated and can be 25x slower: measure, never assume.
    gflops = {name: max(measure_matmul_gflops(name, seconds=0.1) for _ in range(3)) for name in ("fp32", "bf16")}
    try:
        atomic.write_text(path, json.dumps({"key": key, "gflops": gflops}))
    except OSError:
        pass
    return gflops


@lru_cache(maxsize=1)
def detect() -> Hardware:
    """Inspect the machine once: CUDA GPU if present, otherwise the CPU with measured matmul speeds."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(
            device="cuda",
            name=props.name,
            features=(f"sm_{props.major}{props.minor}",),
            memory_gb=props.total_memory / 1024**3,
            bf16_fast=torch.cuda.is_bf16_supported(),
            gflops={},
        )
    gflops = _cpu_speed_cache()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        ram = 0.0
    # bf16 must clearly beat fp32 to be worth autocast's casts (AMX/avx512_bf16: 4-7x; AVX2: 0.04x).
    return Hardware(
        device="cpu",
        name=cpu_model(),
        features=cpu_features(),
        memory_gb=ram,
        bf16_fast=gflops["bf16"] > 1.5 * gflops["fp32"],
        gflops=gflops,
    )


def choose_precision(requested: str, hw: Hardware) -> str:
    """Resolve `precision: auto` to fp32, bf16 or fp16 for this hardware."""
    if requested != "auto":
        return requested
    if hw.device == "cuda":
        return "bf16" if hw.bf16_fast else "fp16"
    return "bf16" if hw.bf16_fast else "fp32"


def choose_checkpointing(requested: str | bool, hw: Hardware) -> bool:
    """Resolve `gradient_checkpointing: auto` from the device alone: on for CUDA (memory-bound), off on a CPU
    (compute-bound). finetune.train then turns CUDA's off where the estimate says the run fits easily without it."""
    if requested != "auto":
        return bool(requested)
    return hw.device == "cuda"


def compile_blocker(device: str) -> str | None:
    """Why torch.compile cannot run on this device here (None: it can).

    Inductor writes C++ for a CPU and builds it with the system's compiler, and Triton kernels for a GPU.
    """
    import importlib.util
    import shutil

    if device == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "torch.compile on a CPU builds C++ and no compiler was found (install g++, or set CXX)"
    elif device == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on a GPU needs Triton, which is not installed"
    elif device not in ("cpu", "cuda"):
        return f"torch.compile is not supported here on {device}"
    return None


def math_attention(cpu_bf16: bool, width: int, checkpointing: bool) -> bool:
    """Whether a batch `width` tokens wide runs torch's matmul attention (CPU bf16, short, no checkpointing).

    Checkpointing recomputes the forward outside the training step's kernel choice, with the default kernel.
    """
    return cpu_bf16 and width <= MATH_ATTENTION_MAX_WIDTH and not checkpointing
