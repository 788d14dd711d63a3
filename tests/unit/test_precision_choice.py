"""precision/checkpointing `auto` on each kind of machine, from injected matmul speeds; a corrupt speed cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from finetune import hardware
from finetune.paths import finetune_home

# Measured GFLOP/s (fp32, bf16): an AVX2-only CPU emulates bf16 (~25x slower); AMX runs it ~7x faster
# (README: 349 vs 2,315 on the Intel AMX machine); avx512_bf16 without AMX about 4x.
MACHINES = {
    "avx2-only": ((120.0, 4.8), ("avx2",), "fp32"),
    "amx": ((349.0, 2315.0), ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"), "bf16"),
    "avx512_bf16": ((150.0, 600.0), ("avx512_bf16", "avx512f", "avx2"), "bf16"),
    "bf16-barely-faster": ((100.0, 140.0), ("avx512_bf16", "avx512f", "avx2"), "fp32"),
}


@pytest.fixture
def fresh_detect(tmp_path, monkeypatch):
    """detect() with its in-process cache cleared and a private FINETUNE_HOME, restored afterwards."""
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    hardware.detect.cache_clear()
    yield
    hardware.detect.cache_clear()


def inject_cpu(monkeypatch, speeds: tuple[float, float], features: tuple[str, ...]) -> list[str]:
    """Make this a CPU-only machine whose matmul measurements return `speeds`; returns the measurement log."""
    measured: list[str] = []

    def measure(dtype_name: str, size: int = 512, seconds: float = 0.25) -> float:
        measured.append(dtype_name)
        return dict(zip(("fp32", "bf16"), speeds))[dtype_name]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "measure_matmul_gflops", measure)
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    return measured


@pytest.mark.parametrize("machine", list(MACHINES))
def test_cpu_precision_follows_the_measured_matmul_speeds(machine, fresh_detect, monkeypatch):
    speeds, features, expected = MACHINES[machine]
    inject_cpu(monkeypatch, speeds, features)
    hw = hardware.detect()
    assert hw.device == "cpu" and hw.gflops == {"fp32": speeds[0], "bf16": speeds[1]}
    assert hardware.choose_precision("auto", hw) == expected
    assert hardware.choose_checkpointing("auto", hw) is False, "a CPU is compute-bound: no recomputation"
    # An explicit choice is kept whatever the machine says.
    assert hardware.choose_precision("fp32", hw) == "fp32" and hardware.choose_precision("bf16", hw) == "bf16"
    assert hardware.choose_checkpointing(True, hw) is True


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_cuda_gets_bf16_where_supported_else_fp16_and_checkpointing(bf16_supported, expected, fresh_detect,
                                                                     monkeypatch):
    props = SimpleNamespace(name="NVIDIA GeForce RTX 4060 Ti", major=8 if bf16_supported else 7,
                            minor=9 if bf16_supported else 5, total_memory=16 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    monkeypatch.setattr(hardware, "measure_matmul_gflops", lambda *a, **k: pytest.fail("no CPU matmul on CUDA"))
    hw = hardware.detect()
    assert hw.device == "cuda" and hw.memory_gb == 16.0
    assert hardware.choose_precision("auto", hw) == expected
    assert hardware.choose_checkpointing("auto", hw) is True
    assert hardware.choose_checkpointing(False, hw) is False


def test_speeds_are_measured_once_and_cached_per_cpu(fresh_detect, monkeypatch):
    measured = inject_cpu(monkeypatch, (349.0, 2315.0), ("amx_bf16",))
    hardware.detect()
    first = len(measured)
    assert first >= 2 and set(measured) == {"fp32", "bf16"}
    hardware.detect.cache_clear()
    assert hardware.detect().bf16_fast is True
    assert len(measured) == first, "a second process reads the cache instead of measuring again"
    cached = json.loads((finetune_home() / "hardware.json").read_text())
    assert cached["gflops"] == {"fp32": 349.0, "bf16": 2315.0}


def test_speeds_measured_with_every_kernel_are_not_used_when_torch_is_limited_to_avx2(fresh_detect, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    inject_cpu(monkeypatch, (160.0, 400.0), ("avx512_bf16", "avx512f", "avx2"))
    assert hardware.detect().bf16_fast is True
    # The same CPU with oneDNN limited to AVX2: bf16 is emulated there, so the speeds are measured again.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    inject_cpu(monkeypatch, (160.0, 2.0), ("avx512_bf16", "avx512f", "avx2"))
    hardware.detect.cache_clear()
    hw = hardware.detect()
    assert hardware.choose_precision("auto", hw) == "fp32"


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[]", '{"key": "%s"}', '{"key": "%s", "gflops": {}}', '{"key": "%s", "gflops": "fast"}',
     '{"key": "%s", "gflops": {"fp32": "a lot", "bf16": null}}', '{"key": "%s", "gflops": {"fp32": -1, "bf16": 5}}'],
)
def test_a_corrupt_speed_cache_is_measured_again_and_replaced(content, fresh_detect, monkeypatch):
    measured = inject_cpu(monkeypatch, (120.0, 4.8), ("avx2",))
    key = hardware.speed_cache_key()
    path = finetune_home() / "hardware.json"
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("%s", key))
    hw = hardware.detect()
    assert measured, "the corrupt cache was trusted"
    assert hardware.choose_precision("auto", hw) == "fp32"
    assert json.loads(path.read_text())["gflops"] == {"fp32": 120.0, "bf16": 4.8}, "the cache is repaired"
