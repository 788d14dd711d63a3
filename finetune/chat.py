"""`finetune chat` and `finetune generate`: talk to a run (base + adapter), an export or a base model."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from finetune.errors import DataError, ModelError, RunError

HELP = "commands: /system TEXT (new system prompt, new conversation), /reset, /quit"


def _to_device(model: Any) -> Any:
    """Use the GPU when there is one; CPU otherwise."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def _adapter_base(adapter_dir: Path) -> str:
    """A loadable base for an adapter folder: bundled models by hub id, else base_model_name_or_path."""
    from finetune.models import BUNDLED, resolve_base_model

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or ""
    for name, info in BUNDLED.items():
        if info.get("hub_id") == base:
            return resolve_base_model(f"bundled:{name}")  # the local converted copy: no hub needed
    if not base:
        raise ModelError(f"{adapter_dir}/adapter_config.json: no base_model_name_or_path")
    return resolve_base_model(base)


def _load_folder(
    path: str, tokenizer_from: str | None = None, gguf_file: str | None = None
) -> tuple[Any, Any]:
    """A transformers model and tokenizer from a folder, hub id or GGUF file, in fp32 (a GGUF inside the caller's
    `gguf_read_once`, so that the file is parsed once, not three times)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or path, **({} if tokenizer_from else extra))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: GGUF tensors of another shape (Qwen3)
        reason = str(exc).strip().splitlines()[0]
        if isinstance(exc, RuntimeError) and not gguf_file:
            raise
        if gguf_file:  # transformers' GGUF reader knows fewer architectures than llama.cpp (GPT-NeoX: rinna's)
            raise ModelError(f"{Path(path) / gguf_file}: cannot load it into transformers ({reason}); chat with "
                             "the run or its export-merged/ folder, or run the GGUF in llama.cpp or Ollama") from None
        raise ModelError(f"{path}: cannot load: {reason}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


# llama.cpp pre-tokenizers (GGUF `tokenizer.ggml.pre`) that split digits one by one before the byte-level step:
# transformers' GGUF loader rebuilds only the byte-level step (finetune/models.py says more).
DIGIT_SPLITTING_PRE = ("smollm",)


def _check_model_gguf(path: Path) -> str | None:
    """Refuse a LoRA adapter GGUF (transformers would build a full-size model from default sizes around it,
    tens of GB); return the file's llama.cpp pre-tokenizer name."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    kind = fields["general.type"].contents() if "general.type" in fields else None
    if kind == "adapter":
        raise RunError(f"{path}: a LoRA adapter GGUF, not a model; chat with the run itself, or export it merged "
                       "(finetune export RUN --merge --format gguf), or run it in llama.cpp over its base GGUF "
                       "(--lora)")
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    return pre if isinstance(pre, str) else None


def _split_digits(tokenizer: Any) -> None:
    """Put the digit-by-digit split back in front of a GGUF tokenizer's byte-level pre-tokenizer, as the model
    was trained with and llama.cpp runs it."""
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     backend.pre_tokenizer])


def gguf_tokenizer_warning(path: Path, tokenizer: Any) -> str | None:
    """Where transformers' rebuild of a GGUF's tokenizer splits text unlike llama.cpp, the runtime the file is
    for, a warning (None when they agree, or llama-cpp-python is not installed to ask).

    transformers rebuilds a sentencepiece GGUF's tokenizer as a BPE with a Metaspace step: on Mistral's and
    Gemma 2's vocabularies it splits `[INST]` after `<s>`, and runs of spaces, unlike training and llama.cpp.
    The probe is the export's token check text plus a rendered chat turn.
    """
    from finetune import llama_cpp
    from finetune.data import render_chat

    if not llama_cpp.runtime_available():
        return None
    from llama_cpp import Llama

    sample = render_chat(tokenizer, [{"role": "user", "content": "Hello there,  world 12345 x  +  1"}], True)
    llm = Llama(str(path), vocab_only=True, verbose=False)
    try:
        check = llama_cpp.token_check(llm, tokenizer, llama_cpp.CHECK_TEXT + sample)
    finally:
        llm.close()
    if check["passed"]:
        return None
    return (f"warning: {path.name}: transformers' rebuild of its tokenizer splits "
            f"{check['first_mismatch']['text'][:60]!r} unlike llama.cpp, the runtime the file is for "
            f"({check['texts'] - check['matched']} of {check['texts']} probe texts): replies here may differ from "
            "llama.cpp's and Ollama's")


def load_target(
    target: str, adapter: bool = True, warn: Callable[[str], None] | None = None
) -> tuple[Any, Any, str]:
    """Model, tokenizer and label for a run name/folder, an exported folder, a .gguf file or a base model.

    `warn`: told when a GGUF's tokenizer, as transformers rebuilds it, splits text unlike llama.cpp."""
    from finetune.inference import attach_adapter, load_run_model
    from finetune.models import resolve_base_model

    try:
        model, tokenizer, recipe = load_run_model(target, adapter=adapter)
        return _to_device(model), tokenizer, f"{recipe.name}{'' if adapter else ' (base, no adapter)'}"
    except RunError:
        pass
    path = Path(target)
    if not adapter and not (path / "adapter_config.json").is_file():
        # A merged export carries the adapter in its weights: loading it "without" would answer as the adapter.
        raise RunError(f"--no-adapter: {target} has no separate adapter to leave out (a merged export holds it in "
                       f"its weights); give the run or its base model instead")
    if path.is_file() and path.suffix == ".gguf":
        from finetune.models import gguf_read_once

        with gguf_read_once():  # one parse of the file for the check, the tokenizer, the config and the weights
            pre = _check_model_gguf(path)
            model, tokenizer = _load_folder(str(path.parent), gguf_file=path.name)
        if pre in DIGIT_SPLITTING_PRE:
            _split_digits(tokenizer)
        note = gguf_tokenizer_warning(path, tokenizer) if warn is not None else None
        if note:
            warn(note)
        return _to_device(model), tokenizer, path.name
    if (path / "adapter_config.json").is_file():
        # The adapter folder's tokenizer carries the chat template the adapter was trained with.
        model, tokenizer = _load_folder(_adapter_base(path), tokenizer_from=str(path))
        if adapter:
            model = attach_adapter(model, path)
        return _to_device(model), tokenizer, f"{path.name}{'' if adapter else ' (base, no adapter)'}"
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))  # an export-*gguf folder: name the file it holds
        hint = f" (it holds {', '.join(ggufs)}: give the file)" if ggufs else ""
        raise RunError(f"{target}: not a run, a model folder, an adapter folder or a .gguf file{hint}")
    if not path.expanduser().exists() and _looks_like_a_path(target):
        # `outputs/typo` would otherwise be asked of the hub as a model id ("couldn't connect to huggingface.co").
        raise RunError(f"{target}: no such file or folder (not a run, an export, a .gguf file or a model folder)")
    try:
        spec = resolve_base_model(target)
    except ModelError:
        if "/" in target or ":" in target or path.exists():  # a hub id, bundled:NAME or a path: its own error
            raise
        raise RunError(_no_such_target(target)) from None
    model, tokenizer = _load_folder(spec)
    return _to_device(model), tokenizer, target


def _looks_like_a_path(target: str) -> bool:
    """Whether a target that does not exist was meant as a path, not a hub id ('org/name'): it starts like one,
    has more than one '/', ends in .gguf, or begins with the runs folder (outputs/...). A folder named like a hub
    org (./Qwen from a download) does not make 'Qwen/Qwen2.5-7B-Instruct' a path."""
    from finetune.paths import outputs_dir

    if target.startswith(("/", "./", "../", "~", ".\\")) or target.count("/") > 1 or target.endswith(".gguf"):
        return True
    first = Path(target).parts[0] if Path(target).parts else ""
    return "/" in target and first in {"outputs", outputs_dir().name}


def _no_such_target(name: str) -> str:
    """A plain name that is neither a run nor a model: most often a run's name mistyped, so offer the closest."""
    import difflib

    from finetune.paths import outputs_dir

    root = outputs_dir()
    names = sorted(p.name for p in root.iterdir() if (p / "recipe.yaml").is_file()) if root.is_dir() else []
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{name}: no run of that name in {root}{hint}, and not a bundled model, a model folder, a .gguf file "
            f"or a hub id like 'org/name'")


def conversation(history: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """The messages to send: the system prompt (if any) then the turns so far."""
    return ([{"role": "system", "content": system}] if system else []) + history


def stream_reply(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int
) -> Iterator[str]:
    """Generate greedily in a background thread and yield text pieces as they are decoded."""
    import torch
    from transformers import TextIteratorStreamer

    from finetune.data import render_chat
    from finetune.inference import stop_ids

    # As training rendered it: a system turn folded into the first user turn where the template has no system role.
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    **encoded,
                    streamer=streamer,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=sorted(stop_ids(tokenizer)),
                    pad_token_id=tokenizer.pad_token_id,
                )
        except BaseException as exc:  # surfaced in the main thread once the stream ends
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def chat_loop(
    model: Any,
    tokenizer: Any,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    label: str = "assistant",
) -> int:
    """Read user lines, stream replies; /system, /reset and /quit. Returns the number of replies."""
    history: list[dict[str, str]] = []
    replies = 0
    interactive = stdin.isatty()

    def show(text: str, end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    show(f"chatting with {label}; {HELP}")
    while True:
        if interactive:
            show("you> ", end="")
        line = stdin.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command == "/quit":
                break
            if command == "/reset":
                history = []
                show("(conversation reset)")
            elif command == "/system":
                system, history = rest.strip() or None, []
                show(f"(system prompt {'set' if system else 'cleared'}; conversation reset)")
            else:
                show(f"(unknown command {command}; {HELP})")
            continue
        history.append({"role": "user", "content": line})
        show("assistant> ", end="")
        pieces = []
        for piece in stream_reply(model, tokenizer, conversation(history, system), max_new_tokens):
            pieces.append(piece)
            show(piece, end="")
        show("")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
        replies += 1
    show("bye")
    return replies


def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from JSONL rows {"prompt": ...} or {"messages": [...]} (errors name the line)."""
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    rows = []
    from finetune.data import jsonl_lines

    for number, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            rows.append([{"role": "user", "content": row["prompt"]}])
        elif (
            isinstance(row, dict)
            and isinstance(row.get("messages"), list)
            and row["messages"]
            and all(
                isinstance(m, dict)
                and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)
                for m in row["messages"]
            )
        ):
            rows.append([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
        else:
            raise DataError(
                f'{path}:{number}: expected {{"prompt": TEXT}} or {{"messages": [{{role, '
                "content}}, ...]}}"
            )
    if not rows:
        raise DataError(f"{path}: no prompts in the file")
    return rows


def generate_records(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
) -> Iterator[dict[str, Any]]:
    """One record per conversation: prompt (last user turn), text, token counts and latency."""
    from finetune.inference import generate

    prepared = [
        c if (not system or c[0]["role"] == "system") else conversation(c, system) for c in conversations
    ]
    for convo, result in zip(
        prepared, generate(model, tokenizer, prepared, max_new_tokens=max_new_tokens), strict=True
    ):
        prompt = next((m["content"] for m in reversed(convo) if m["role"] == "user"), "")
        yield {
            "prompt": prompt,
            "text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "latency_s": round(result.latency_s, 4),
        }
