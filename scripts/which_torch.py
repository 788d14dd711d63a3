"""Say which torch `make install` put in the venv, which build it is, and where it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CPU_HINT = ("for a CPU-only build: make install TORCH=\"torch==2.13.0 --index-url "
            "https://download.pytorch.org/whl/cpu\"")


def source(report_file: Path | None) -> str:
    """Where pip took torch from (a pip install --report file), or that it was already there."""
    if report_file is None or not report_file.is_file():
        return "already installed"
    report = json.loads(report_file.read_text(encoding="utf-8"))
    for item in report.get("install", []):
        if item.get("metadata", {}).get("name", "").lower() == "torch":
            return "from " + item.get("download_info", {}).get("url", "an unknown location")
    return "already installed"


def main() -> None:
    """Print one line (and a hint when a large CUDA build was chosen on a machine without a GPU)."""
    import warnings

    warnings.filterwarnings("ignore")  # numpy is installed after torch: torch's warning about it is noise here
    import torch

    report = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build" + (" (Apple MPS available)" if torch.backends.mps.is_available() else "")
    print(f"torch {torch.__version__}: {build}, {source(report)}")
    if torch.version.cuda and not torch.cuda.is_available():
        print(f"  no CUDA device visible here; {CPU_HINT}")


if __name__ == "__main__":
    main()
