"""`finetune export`: a run's adapter as a clean PEFT folder, merged into its base, or as GGUF, self-checked.

Each export runs fixed prompts through the exported artefact and through the unquantised base model with the
run's adapter applied by peft, and fails when the largest logit difference exceeds the dtype's tolerance.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune import atomic
from finetune.errors import ModelError, RunError
from finetune.gguf_export import GGUF_SUFFIX
from finetune.runs import MERGE_FILE

# Largest |logit difference| allowed between the artefact and base + adapter, both computed in fp32.
# fp32 differs only by summation order; fp16/bf16 add the rounding of every stored weight (bf16 keeps
# 8 mantissa bits, fp16 11), which moves logits of a 30-layer model by a few hundredths to tenths.
TOLERANCES = {"fp32": 1e-3, "fp16": 0.25, "bf16": 1.5}
DTYPES = ("fp32", "fp16", "bf16")
FORMATS = ("safetensors", "gguf")
VERIFY_PROMPTS = (
    "Tell me about yourself in two sentences.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
)

# --- small pure helpers ---------------------------------------------------------------------------------


def default_dtype(merge: bool) -> str:
    """fp32 for adapters (they are small and stay exact), fp16 for merged models (half the size)."""
    return "fp16" if merge else "fp32"


def default_out_dir(run_dir: Path, merge: bool, fmt: str = "safetensors") -> Path:
    """outputs/<run>/export, export-merged, export-gguf or export-merged-gguf: one folder per kind of export,
    so exporting the adapter and then its GGUF (docs/export.md) needs no --force and replaces nothing."""
    return run_dir / ("export" + ("-merged" if merge else "") + ("-gguf" if fmt == "gguf" else ""))


def base_hub_id(spec: str) -> str:
    """The base model as others can find it: the hub id of a bundled model, else the recipe's value."""
    from finetune.models import BUNDLED

    if spec.startswith("bundled:"):
        return BUNDLED.get(spec.split(":", 1)[1], {}).get("hub_id", spec)
    return spec


def max_abs_diff(left: list[Any], right: list[Any]) -> float:
    """The largest absolute difference over matching lists of tensors."""
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(left, right, strict=True))


# --- folders ---------------------------------------------------------------------------------------------


# What an earlier export (verification.json) or merge-adapters (merge.json) leaves: only such a folder is replaced.
EXPORT_MARKS = ("verification.json", MERGE_FILE)


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty export folder without --force; --force replaces only an earlier export, never a run
    folder or a folder of other things (`--out outputs --force` would have emptied every run in it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        merged = (out_dir / MERGE_FILE).is_file()  # a merge-adapters output has a recipe.yaml but trained nothing
        if (out_dir / "summary.json").is_file() or ((out_dir / "recipe.yaml").is_file() and not merged):
            raise RunError(f"{out_dir}: is a run folder; --force will not replace it (choose another --out)")
        if not any((out_dir / mark).is_file() for mark in EXPORT_MARKS):
            raise RunError(f"{out_dir}: not empty and not an earlier export (no verification.json or merge.json); "
                           "--force replaces only exports (choose a new or empty --out)")
        if not force:
            what = "merge-adapters output" if merged else "export"
            raise RunError(f"{out_dir}: holds an earlier {what}; use --force to replace it")


# --- models and logits -------------------------------------------------------------------------------------


def verify_inputs(tokenizer: Any) -> list[Any]:
    """Token ids of the fixed verification prompts, rendered with the chat template as inference renders them."""
    from finetune.data import render_chat

    ids = []
    for prompt in VERIFY_PROMPTS:
        text = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids.append(tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    return ids


def logits_of(model: Any, inputs: list[Any]) -> list[Any]:
    """Logits of every position of each prompt (one prompt at a time: no padding to get wrong)."""
    import torch

    with torch.inference_mode():
        return [model(input_ids=ids.to(model.device)).logits[0].float().cpu() for ids in inputs]


def adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """A saved adapter's adapter_config.json."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise RunError(f"{path}: missing (did the run finish and save its adapter?)")
    return json.loads(path.read_text(encoding="utf-8"))


def adapter_state(adapter_dir: Path) -> dict[str, Any]:
    """A saved adapter's weights."""
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise RunError(f"{path}: missing (only safetensors adapters can be exported)")
    return load_file(str(path))


def sentencepiece_model(base_model: str) -> Path | None:
    """The base model's sentencepiece tokenizer.model (local folder or hub cache), if it ships one."""
    from finetune.models import resolve_base_model

    local = Path(resolve_base_model(base_model))
    if local.is_dir():
        path = local / "tokenizer.model"
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(local), "tokenizer.model")
    return Path(cached) if isinstance(cached, str) else None


def write_tokenizer(tokenizer: Any, folder: Path, spm_model: Path | None = None) -> None:
    """Save the tokenizer (with its chat template) into a folder, with the base's tokenizer.model if any.

    transformers saves only tokenizer.json; llama.cpp's converter reads the sentencepiece scores from
    tokenizer.model and, without it, gives every piece the same score (Llama 2, Mistral, Phi-3, Gemma).
    """
    from finetune.data import save_tokenizer

    save_tokenizer(tokenizer, folder)
    if spm_model is not None:
        shutil.copy(spm_model, Path(folder) / "tokenizer.model")
        _spm_added_tokens(tokenizer, spm_model, Path(folder))


def _spm_added_tokens(tokenizer: Any, spm_model: Path, folder: Path) -> None:
    """Tokens added beyond the sentencepiece model, where llama.cpp's converter looks for them.

    transformers 5 keeps them in tokenizer.json only; the converter reads tokenizer_config.json's
    added_tokens_decoder, and without it a template token like <end_of_turn> became "[PAD32001]" in the GGUF.
    """
    from sentencepiece import SentencePieceProcessor

    pieces = SentencePieceProcessor(model_file=str(spm_model)).vocab_size()
    added = {str(i): {"content": t.content, "special": t.special}
             for i, t in tokenizer.added_tokens_decoder.items() if i >= pieces}
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if added and not config.get("added_tokens_decoder"):
        config["added_tokens_decoder"] = added
        atomic.write_json(path, config)


# --- the export -------------------------------------------------------------------------------------------


class Exporter:
    """One export of one run: loads the base once, writes the artefact, verifies it, writes the card."""

    def __init__(
        self,
        run: str | Path,
        *,
        merge: bool,
        dtype: str | None,
        fmt: str,
        ollama: bool,
        out: str | Path | None,
        force: bool,
        say: Callable[[str], None],
    ) -> None:
        from finetune.inference import load_run

        if fmt not in FORMATS:
            raise RunError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
        if ollama and fmt != "gguf":
            say("--ollama: writing GGUF (Ollama reads GGUF files)")
            fmt = "gguf"
        self.dtype = dtype or default_dtype(merge)
        if self.dtype not in DTYPES:
            raise RunError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if fmt == "gguf" and self.dtype == "bf16":
            raise RunError("--dtype bf16: GGUF export writes f16 or f32 (use --dtype fp16 or fp32)")
        self.run_dir, self.recipe = load_run(run)
        self.adapter_dir = self.run_dir / "adapter"
        self.lora_config = adapter_config(self.adapter_dir)
        self.merge, self.fmt, self.ollama, self.say = merge, fmt, ollama, say
        self.out_dir = Path(out) if out else default_out_dir(self.run_dir, merge, fmt)
        check_target(self.out_dir, force)
        self.hub_id = base_hub_id(self.recipe.base_model)
        self.spm_model = sentencepiece_model(self.recipe.base_model)
        if fmt == "gguf":  # refuse an architecture llama.cpp cannot run before loading or writing anything
            from finetune import llama_cpp
            from finetune.models import load_config

            config = load_config(self.recipe)
            llama_cpp.require_architecture((config.architectures or [None])[0], config.model_type)
        self.files: list[str] = []

    def run(self) -> dict[str, Any]:
        """Write, verify and publish the export; raise ModelError (after writing the report) if it fails."""
        from finetune.inference import attach_adapter, load_base

        bits = self.recipe.quantization.bits
        base, self.tokenizer = load_base(self.recipe, "fp32")
        self.config = base.config.to_dict()
        self.config["architectures"] = [type(base).__name__]
        if self.merge and bits is not None:
            self.say(
                f"QLoRA run (trained on a {bits}-bit base): reloaded the base unquantised in fp32 and "
                "merging into those weights, never into de-quantised 4-bit weights"
            )
        model = attach_adapter(base, self.adapter_dir, name="run")
        inputs = verify_inputs(self.tokenizer)
        reference = logits_of(model, inputs)
        with atomic.staged_dir(self.out_dir) as tmp:
            report = self._write(model, inputs, tmp)
            report.update(
                {
                    "run": str(self.run_dir),
                    "base_model": self.recipe.base_model,
                    "base_hub_id": self.hub_id,
                    "trained_quantization": bits,
                    "dtype": self.dtype,
                    "format": self.fmt,
                    "compute_dtype": "fp32",
                    "prompts": len(inputs),
                    "positions": sum(int(i.shape[1]) for i in inputs),
                    "tolerance": TOLERANCES[self.dtype],
                }
            )
            logits = report.pop("_logits")
            tokens_ok = report.pop("_tokens_passed", True)
            report["max_abs_logit_diff"] = None if logits is None else max_abs_diff(logits, reference)
            report["passed"] = tokens_ok and (logits is None or report["max_abs_logit_diff"] <= report["tolerance"])
            atomic.write_json(tmp / "verification.json", report)
            self.files.append("verification.json")
            self._card(tmp, report)
        report["out_dir"] = str(self.out_dir)
        if not report["passed"] and not tokens_ok:
            raise ModelError(
                f"{self.out_dir / 'verification.json'}: llama.cpp tokenises "
                f"{report['tokens']['first_mismatch']['text']!r} differently from training; "
                "the export is not faithful"
            )
        if not report["passed"]:
            raise ModelError(
                f"{self.out_dir / 'verification.json'}: largest logit difference "
                f"{report['max_abs_logit_diff']:.3g} "
                f"exceeds the {self.dtype} tolerance {report['tolerance']:g}; the export is not faithful"
            )
        return report

    # Each writer returns the report fields plus "_logits": the artefact's logits on the verify prompts.

    def _write(self, model: Any, inputs: list[Any], tmp: Path) -> dict[str, Any]:
        """Dispatch on --merge and --format."""
        if self.fmt == "gguf":
            return (
                self._merged_gguf(model, inputs, tmp) if self.merge else self._lora_gguf(model, inputs, tmp)
            )
        return self._merged(model, inputs, tmp) if self.merge else self._adapter(model, inputs, tmp)

    def _merge_fields(self) -> dict[str, Any]:
        """What the merge did, for verification.json and the printed line."""
        bits = self.recipe.quantization.bits
        return {
            "merge": {
                "base_reloaded": "unquantised fp32",
                "trained_on": f"{bits}-bit" if bits else "unquantised",
                "merged_dtype": self.dtype,
            }
        }

    def _adapter(self, model: Any, inputs: list[Any], tmp: Path) -> dict[str, Any]:
        """A clean PEFT folder: weights in the chosen dtype, a config naming the hub base, the tokenizer."""
        from safetensors.torch import save_file

        from finetune.inference import attach_adapter
        from finetune.models import torch_dtype

        target = torch_dtype(self.dtype)
        state = {
            k: (v.to(target) if v.is_floating_point() else v).contiguous()
            for k, v in adapter_state(self.adapter_dir).items()
        }
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = dict(self.lora_config)
        config["base_model_name_or_path"] = self.hub_id
        config["inference_mode"] = True
        atomic.write_json(tmp / "adapter_config.json", config)
        write_tokenizer(self.tokenizer, tmp, self.spm_model)
        self.files += sorted(p.name for p in tmp.iterdir())
        model = attach_adapter(model, tmp, name="export")
        model.set_adapter("export")
        model.eval()
        logits = logits_of(model, inputs)
        self.say(f"adapter written ({self.dtype}); checked by loading it with peft onto the base")
        return {
            "export": "adapter",
            "artefact": "adapter_model.safetensors",
            "_logits": logits,
            "method": "the exported folder loaded with PeftModel onto the fp32 base",
        }

    def _merged_model(self, model: Any) -> Any:
        """Merge the adapter into the fp32 base weights, then cast to the export dtype."""
        from finetune.models import torch_dtype

        merged = model.merge_and_unload()
        return merged.to(torch_dtype(self.dtype))

    def _merged(self, model: Any, inputs: list[Any], tmp: Path) -> dict[str, Any]:
        """A standard transformers folder (safetensors) with the adapter merged into the weights."""
        import torch
        from transformers import AutoModelForCausalLM

        merged = self._merged_model(model)
        merged.save_pretrained(str(tmp), safe_serialization=True)
        write_tokenizer(self.tokenizer, tmp, self.spm_model)
        del merged
        self.files += sorted(p.name for p in tmp.iterdir())
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        logits = logits_of(reloaded, inputs)
        self.say(f"merged into the base and saved in {self.dtype} (safetensors)")
        return {
            "export": "merged",
            "artefact": "model.safetensors",
            "_logits": logits,
            "method": "the saved folder reloaded with AutoModelForCausalLM in fp32",
            **self._merge_fields(),
        }

    def _merged_gguf(self, model: Any, inputs: list[Any], tmp: Path) -> dict[str, Any]:
        """The merged model as one GGUF written by llama.cpp's own converter, checked in llama.cpp."""
        from finetune import llama_cpp

        name = f"{self.recipe.name}-{GGUF_SUFFIX[self.dtype]}.gguf"
        merged = model.merge_and_unload()  # fp32: the converter rounds once, to the GGUF's type
        with tempfile.TemporaryDirectory(prefix=".merged-hf-", dir=tmp.parent) as scratch:
            merged.save_pretrained(scratch, safe_serialization=True)
            write_tokenizer(self.tokenizer, Path(scratch), self.spm_model)
            llama_cpp.convert_model(Path(scratch), tmp / name, GGUF_SUFFIX[self.dtype])
        self.files.append(name)
        if self.ollama:
            self._modelfile(tmp, model_file=name)
        self.say(f"merged and written as GGUF ({GGUF_SUFFIX[self.dtype]}) by llama.cpp's converter: {name}")
        return {
            "export": "merged-gguf",
            "artefact": name,
            "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {llama_cpp.VERSION} sources)",
            **self._in_llama_cpp(tmp / name, None, inputs),
            **self._merge_fields(),
        }

    def _lora_gguf(self, model: Any, inputs: list[Any], tmp: Path) -> dict[str, Any]:
        """The adapter as a llama.cpp LoRA GGUF (convert_lora_to_gguf.py), checked over a converted base."""
        from safetensors.torch import save_file

        from finetune import llama_cpp
        from finetune.gguf_export import conv1d_pairs_for_converter, lora_alpha_for_gguf, lora_pairs

        # One-line refusals before any work: what llama.cpp's LoRA format cannot hold needs --merge.
        lora_alpha_for_gguf(self.lora_config)
        state = adapter_state(self.adapter_dir)
        lora_pairs(state)
        name = f"{self.recipe.name}-lora-{GGUF_SUFFIX[self.dtype]}.gguf"
        base = model.unload()  # the untouched base: peft's layers removed, nothing merged
        conv1d = {name for name, module in base.named_modules() if type(module).__name__ == "Conv1D"}
        with tempfile.TemporaryDirectory(prefix=".lora-hf-", dir=tmp.parent) as scratch:
            base_dir, adapter_dir = Path(scratch) / "base", Path(scratch) / "adapter"
            base.save_pretrained(str(base_dir), safe_serialization=True)
            write_tokenizer(self.tokenizer, base_dir, self.spm_model)
            adapter_dir.mkdir()
            save_file(conv1d_pairs_for_converter(state, conv1d), str(adapter_dir / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
            atomic.write_json(adapter_dir / "adapter_config.json",
                              {**self.lora_config, "base_model_name_or_path": str(base_dir)})
            llama_cpp.convert_lora(adapter_dir, base_dir, tmp / name, GGUF_SUFFIX[self.dtype])
            self.files.append(name)
            if self.ollama:
                base_name = f"{self.hub_id.rstrip('/').split('/')[-1]}-f16.gguf"
                llama_cpp.convert_model(base_dir, tmp / base_name, "f16")
                self.files.append(base_name)
                self._modelfile(tmp, model_file=base_name, adapter_file=name)
            check = {}
            if llama_cpp.runtime_available():
                # The adapter is checked over an f32 base so the figure measures the adapter, not f16 rounding.
                llama_cpp.convert_model(base_dir, Path(scratch) / "base-f32.gguf", "f32")
                check = self._in_llama_cpp(Path(scratch) / "base-f32.gguf", tmp / name, inputs)
        self.say(f"adapter written as LoRA GGUF ({GGUF_SUFFIX[self.dtype]}) by llama.cpp's converter: {name}")
        return {
            "export": "lora-gguf",
            "artefact": name,
            "converter": f"llama.cpp convert_lora_to_gguf.py (llama-cpp-python {llama_cpp.VERSION} sources)",
            **(check or self._in_llama_cpp(tmp / name, None, inputs)),
        }

    def _in_llama_cpp(self, model_file: Path, lora: Path | None, inputs: list[Any]) -> dict[str, Any]:
        """Token ids and logits of the GGUF in llama.cpp itself (skipped when llama-cpp-python is missing)."""
        from finetune import llama_cpp

        if not llama_cpp.runtime_available():
            self.say("verification in llama.cpp skipped: llama-cpp-python is not installed (make llama-cpp)")
            return {"_logits": None, "llama_cpp": "skipped: llama-cpp-python not installed",
                    "method": "none (llama.cpp not installed)"}
        llm = llama_cpp.load(model_file, lora, n_ctx=max(64, max(int(i.shape[1]) for i in inputs) + 8))
        try:
            token_report = llama_cpp.token_check(llm, self.tokenizer)
            logits = [llama_cpp.logits(llm, i[0].tolist()) for i in inputs]
            eog = llama_cpp.eog_ids(llm)
        finally:
            llm.close()
        self.say(f"llama.cpp: {token_report['matched']}/{token_report['texts']} check texts tokenised identically")
        return {
            "_logits": logits,
            "_tokens_passed": token_report["passed"],
            "llama_cpp": "checked",
            "tokens": token_report,
            "end_of_generation_ids": eog,
            "method": "the GGUF loaded in llama.cpp (llama-cpp-python"
            + (", LoRA over an f32 base converted by llama.cpp" if lora else "") + "): logits of the prompts",
        }

    def _modelfile(self, tmp: Path, model_file: str, adapter_file: str | None = None) -> None:
        """An Ollama Modelfile beside the GGUF files."""
        from finetune.ollama import modelfile_text

        text = modelfile_text(self.tokenizer, model_file, adapter_file, self.recipe.system_prompt)
        atomic.write_text(tmp / "Modelfile", text)
        self.files.append("Modelfile")
        self.say("Modelfile written: ollama create NAME -f Modelfile")

    def _card(self, tmp: Path, report: dict[str, Any]) -> None:
        """README.md: the model card with the run's figures."""
        from finetune.card import CardInputs, latest_compare, render_card, resolve_license
        from finetune.models import model_license, resolve_base_model
        from finetune.runs import read_summary

        compare = latest_compare(self.run_dir)
        local = resolve_base_model(self.recipe.base_model)
        inputs = CardInputs(
            title=self.recipe.name + ("-merged" if self.merge else ""),
            kind="merged" if self.merge else "adapter",
            base_model=self.recipe.base_model,
            base_hub_id=self.hub_id,
            base_local=local if local != self.hub_id else None,
            recipe_yaml=self.recipe.to_yaml(),
            system_prompt=self.recipe.system_prompt,
            dataset=Path(self.recipe.dataset.path).name,
            summary=read_summary(self.run_dir),
            compare=compare[0] if compare else None,
            compare_path=str(compare[1]) if compare else None,
            formats=[self.fmt],
            files=sorted(set(self.files) | {"README.md"}),
            verification=report,
        )
        licence = resolve_license(model_license(self.recipe.base_model), self.hub_id)
        atomic.write_text(tmp / "README.md", render_card(inputs, licence))


def export_run(
    run: str | Path,
    *,
    merge: bool = False,
    dtype: str | None = None,
    fmt: str = "safetensors",
    ollama: bool = False,
    out: str | Path | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export a run's adapter (or merged model) and verify it; returns verification.json's content."""
    return Exporter(
        run, merge=merge, dtype=dtype, fmt=fmt, ollama=ollama, out=out, force=force, say=say
    ).run()
