"""llama.cpp as the GGUF runtime: its own converters (from the llama-cpp-python source archive) and checks.

GGUF files are written by llama.cpp's `convert_hf_to_gguf.py` / `convert_lora_to_gguf.py`, which know the
tensor layouts of ~100 architectures and identify a tokenizer's pre-tokenizer by hashing its output; we never
guess one. The converters come from the llama-cpp-python sdist on the package index (the same archive the
runtime is built from), downloaded with pip once and unpacked under `$FINETUNE_HOME/llama-cpp/`.
The checks then load the written files in llama.cpp itself (llama-cpp-python), never in the tool that wrote them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from finetune.errors import ModelError
from finetune.paths import finetune_home

# The llama-cpp-python release whose converters and runtime we use (scripts/llama_cpp.py builds the same).
VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
# Text whose token ids must be identical in training and in llama.cpp: English, Japanese with full-width
# and half-width forms, emoji (with a zero-width joiner), code, runs of spaces, tabs and newlines, numbers.
CHECK_TEXT = (
    "Hello, world! The café's naïve résumé costs $1,234.56.\n"
    "お嬢様はお茶を召し上がりますわ。ＡＢＣ１２３ ｶﾀｶﾅ 全角　スペース\n"
    "🚀 😶\u200d🌫️ 🦙🦙 ✅\n"
    "def f(x):\n    return x  +  1\t\t# tabs\n\n\n"
    "1234567 + 89 = 1234656   ...   ------======\n"
)


def cache_dir() -> Path:
    """Where the sdist and its unpacked copy live (survives fresh clones: CI reuses it).

    `$FINETUNE_HOME/llama-cpp`, or the user-level ~/.cache/finetune/llama-cpp when only that one holds the
    pinned sources (a private FINETUNE_HOME, as each test has, shares the same immutable archive).
    """
    own = finetune_home() / "llama-cpp"
    user = Path.home() / ".cache" / "finetune" / "llama-cpp"
    for root in (own, user):
        if (root / f"src-{VERSION}").is_dir() or (root / SDIST).is_file():
            return root
    return own


def source_dir(download: bool = True) -> Path | None:
    """llama.cpp's source tree (converters, gguf-py, models/), unpacked once from the cached sdist.

    With `download`, a missing sdist is fetched with `pip download` from the package index. None when it
    cannot be had (offline, no cache).
    """
    root = cache_dir()
    tree = root / f"src-{VERSION}" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    archive = root / SDIST
    if not archive.is_file() and download:
        root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={VERSION}", "-d", str(root)]
        subprocess.run(cmd, check=False, capture_output=True, timeout=600)
    if not archive.is_file():
        return None
    staging = root / f".src-{VERSION}.tmp{os.getpid()}"
    members = ("/vendor/llama.cpp/convert", "/vendor/llama.cpp/conversion/", "/vendor/llama.cpp/gguf-py/",
               "/vendor/llama.cpp/models/")
    with tarfile.open(archive) as tar:
        wanted = [m for m in tar.getmembers() if any(s in m.name for s in members)]
        tar.extractall(staging, members=wanted, filter="data")
    try:
        os.replace(staging, root / f"src-{VERSION}")
    except OSError:  # another process unpacked it first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return tree if (tree / "convert_hf_to_gguf.py").is_file() else None


def require_source() -> Path:
    """The source tree, or a one-line error saying how to get it."""
    tree = source_dir()
    if tree is None:
        raise ModelError(
            f"GGUF export needs llama.cpp's converter from the llama-cpp-python {VERSION} source archive: "
            "run `make llama-cpp` once with the package index reachable"
        )
    return tree


def _converter_error(script: str, stderr: str) -> ModelError:
    """One line out of a converter failure: what it could not convert, and what we support."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    for line in reversed(lines):
        if "not supported" in line or "not recognized" in line or "Error" in line:
            last = line
            break
    if last.startswith("KeyError: "):  # a config.json key the converter needs for this architecture
        last = f"config.json has no {last.split(': ', 1)[1]}, which llama.cpp needs for this architecture"
    if "pre-tokenizer was not recognized" in stderr:
        last = ("the tokenizer's pre-tokenizer is not one llama.cpp knows (its output hash matches none), "
                "so llama.cpp would split text differently from training")
    return ModelError(f"llama.cpp {script}: {last.split(': ', 1)[-1] if 'Error: ' in last else last}")


def run_converter(script: str, args: list[str]) -> None:
    """Run one of llama.cpp's converters (with its own gguf-py) in a subprocess; fail with one line.

    Through finetune.llama_cpp_convert, which puts back the config keys transformers 5 moved (GPT-NeoX's
    `rotary_pct`) before the converter reads them.
    """
    tree = require_source()
    package_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "gguf-py"), str(tree), str(package_root)]),
           "NO_LOCAL_GGUF": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "finetune.llama_cpp_convert", str(tree / script), *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _converter_error(script, done.stderr + done.stdout)


def convert_model(model_dir: Path, outfile: Path, outtype: str) -> None:
    """A Hugging Face model folder (weights, config, tokenizer) as one GGUF, by convert_hf_to_gguf.py."""
    run_converter("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(outfile), "--outtype", outtype,
                                            "--model-name", outfile.stem])


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str) -> None:
    """A peft adapter folder as a llama.cpp LoRA GGUF, by convert_lora_to_gguf.py (base config from base_dir)."""
    run_converter(
        "convert_lora_to_gguf.py",
        [str(adapter_dir), "--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype],
    )


# Architectures the test zoo exports and checks in llama.cpp (tests/integration/test_zoo.py, docs/export.md).
TESTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "gpt_neox", "gpt2")


def converter_architectures() -> set[str]:
    """The model classes (config.json `architectures`) convert_hf_to_gguf.py knows: its TEXT_MODEL_MAP's keys.

    Read as data from the converter's own source, so a refusal needs no torch import in a subprocess.
    """
    import ast

    source = (require_source() / "conversion" / "__init__.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return set(ast.literal_eval(node.value))
    return set()


def require_architecture(architecture: str | None, model_type: str | None) -> None:
    """Refuse, in one line, a model class llama.cpp's converter does not know (before anything is written)."""
    known = converter_architectures()
    if architecture and known and architecture not in known:
        raise ModelError(
            f"{architecture} ({model_type}): llama.cpp (llama-cpp-python {VERSION}) has no such architecture, "
            "so no GGUF can run it; "
            f"GGUF export supports {', '.join(TESTED_ARCHITECTURES)} (tested) and the other architectures of "
            "convert_hf_to_gguf.py; export with --format safetensors instead"
        )


# --- the runtime checks ---------------------------------------------------------------------------------


def runtime_available() -> bool:
    """Whether llama-cpp-python is installed (the checks need it; export works without)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def load(model: Path, lora: Path | None = None, n_ctx: int = 512) -> Any:
    """A llama.cpp model (optionally with a LoRA adapter) that keeps the logits of every position."""
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {"lora_path": str(lora)} if lora else {}
    # f32 K/V cache: llama.cpp's default f16 cache alone moved a 30-layer model's logits by 0.04.
    return Llama(str(model), n_ctx=n_ctx, logits_all=True, n_threads=1, n_batch=n_ctx, verbose=False,
                 seed=0, type_k=0, type_v=0, **kwargs)


def tokens(llm: Any, text: str) -> list[int]:
    """llama.cpp's token ids for text, without BOS, with special tokens parsed (as chat prompts are)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def token_check(llm: Any, tokenizer: Any, text: str = CHECK_TEXT) -> dict[str, Any]:
    """Compare llama.cpp's token ids of the check text with the training tokenizer's, line by line."""
    lines = [line for line in text.split("\n") if line] + [text]
    matched, first_bad = 0, None
    for line in lines:
        ours = tokenizer(line, add_special_tokens=False)["input_ids"]
        theirs = tokens(llm, line)
        if ours == theirs:
            matched += 1
        elif first_bad is None:
            first_bad = {"text": line, "training": ours, "llama_cpp": theirs}
    return {"texts": len(lines), "matched": matched, "passed": matched == len(lines), "first_mismatch": first_bad}


def logits(llm: Any, ids: list[int]) -> Any:
    """llama.cpp's logits (positions x vocab, float32 torch tensor) for a token sequence."""
    import numpy as np
    import torch

    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


def eog_ids(llm: Any) -> list[int]:
    """Every token id llama.cpp treats as end of generation."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)]
