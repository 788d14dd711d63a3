"""Install llama-cpp-python (llama.cpp's runtime) into this venv: a cached wheel, built from source once.

    python scripts/llama_cpp.py        # used by `make llama-cpp` (and so by `make test` and CI)

The wheel is built from the sdist on the package index with a CPU-only, native-CPU configuration and kept in
$FINETUNE_HOME/wheels/<cpu key>/ (default ~/.cache/finetune), outside the repository, so fresh clones on the same
machine (CI) reuse it; a machine without it builds it (8-15 min on 2 busy cores, ~5 min on 2 quiet ones). The
same sdist is unpacked for llama.cpp's converters and models/ folder (finetune/llama_cpp.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune import llama_cpp  # noqa: E402
from finetune.paths import finetune_home  # noqa: E402

# CPU only, no server/examples/tests: the Python bindings need only the libraries.
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF "
              "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF")


def cpu_key() -> str:
    """A native build runs only on CPUs with the same instruction sets: key the cached wheel by them."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def installed() -> bool:
    """Whether the pinned llama-cpp-python is importable in this interpreter."""
    try:
        return importlib.metadata.version("llama_cpp_python") == llama_cpp.VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def main() -> int:
    """Ensure the sources are unpacked and the runtime is installed; build the wheel if none is cached."""
    tree = llama_cpp.source_dir()
    if tree is None:
        print("llama-cpp: cannot download the llama-cpp-python sdist (package index unreachable?)", file=sys.stderr)
        return 1
    if installed():
        print(f"llama-cpp: llama-cpp-python {llama_cpp.VERSION} already installed; sources in {tree}")
        return 0
    wheels = finetune_home() / "wheels" / cpu_key()
    found = sorted(wheels.glob(f"llama_cpp_python-{llama_cpp.VERSION}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        print(f"llama-cpp: building llama-cpp-python {llama_cpp.VERSION} from source (once per machine)...",
              flush=True)
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        str(llama_cpp.cache_dir() / llama_cpp.SDIST), "-w", str(wheels)], env=env, check=True)
        print(f"llama-cpp: built in {time.monotonic() - start:.0f} s", flush=True)
        found = sorted(wheels.glob(f"llama_cpp_python-{llama_cpp.VERSION}-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(found[-1])], check=True)
    print(f"llama-cpp: installed {found[-1].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
