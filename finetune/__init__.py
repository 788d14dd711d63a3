"""finetune: LoRA/QLoRA fine-tuning on one consumer GPU (or a CPU), measured end to end."""

import os as _os

# torch's bf16 matmuls on a CPU run through oneDNN, which keeps a compiled kernel and its buffers for every
# matmul shape it meets (1024 of them by default). Batches of varying length keep bringing new shapes, so the
# demo recipe's peak RSS grew by 1.4 GB over 60 steps; with 64 cached kernels it grew by 0.7 GB and ran 9%
# faster (docs/bench.md). Set here, before any matmul runs; a value the user exported wins.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
