"""Teachers that write persona replies: a local model (the recipe's base or a folder) or an HTTP endpoint."""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from finetune.distill import DistillError
from finetune.recipe import Recipe

Messages = list[dict[str, str]]
FALLBACK_MERGED = "merged into the first user turn (the chat template has no system role)"


@dataclass
class Reply:
    """One generated reply: its text, length in tokens (None if unknown) and whether it ended the turn."""

    text: str
    completion_tokens: int | None
    ended: bool
    latency_s: float


class Teacher(Protocol):
    """Something that answers chat prompts: K sampled replies per prompt."""

    def describe(self) -> dict[str, Any]:
        """What the provenance file records about this teacher."""
        ...

    def sample(
        self, prompts: list[Messages], system: str | None, k: int, max_new_tokens: int, temperature: float,
        seed: int,
    ) -> list[list[Reply]]:
        """K sampled replies to each prompt, in prompt order."""
        ...


def with_persona(messages: Messages, system: str | None, native_system: bool) -> Messages:
    """The messages a prompted teacher sees: a system turn, or the persona in front of the first user turn."""
    if not system:
        return list(messages)
    if native_system:
        return [{"role": "system", "content": system}, *messages]
    first, *rest = messages
    return [{"role": "user", "content": f"{system}\n\n{first['content']}"}, *rest]


def supports_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (some raise, some silently drop it)."""
    from finetune.data import apply_template

    probe = "PERSONA-PROBE-7f3a"
    try:
        text = apply_template(tokenizer, [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}],
                              add_generation_prompt=True)
    except Exception:  # jinja's TemplateError ("System role not supported") and friends
        return False
    return probe in text


class LocalTeacher:
    """A causal LM on this machine: sampled candidates with the persona, greedy replies without it."""

    def __init__(self, recipe: Recipe, folder: str | None = None, dtype: str = "fp32", batch_size: int = 8):
        from finetune.inference import load_base

        if folder is not None:
            if not (Path(folder) / "config.json").is_file():
                raise DistillError(f"--teacher {folder}: not a model folder (no config.json) nor an http(s) URL")
            # The teacher's own tokenizer and chat template, not the student recipe's override.
            recipe = recipe.model_copy(update={"base_model": str(folder), "tokenizer": type(recipe.tokenizer)()})
        self.spec = recipe.base_model
        self.model, self.tokenizer = load_base(recipe, dtype)
        self.dtype = dtype
        self.batch_size = batch_size
        self.native_system = supports_system(self.tokenizer)

    def describe(self) -> dict[str, Any]:
        """Kind, model and dtype; how the persona reaches the model."""
        return {
            "kind": "local",
            "model": self.spec,
            "dtype": self.dtype,
            "system_prompt": "system turn" if self.native_system else FALLBACK_MERGED,
        }

    def _generate(
        self, prompts: list[Messages], max_new_tokens: int, seed: int, do_sample: bool, temperature: float
    ) -> list[Reply]:
        from finetune.inference import generate

        results = generate(
            self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
            seed=seed, do_sample=do_sample, temperature=temperature,
        )
        return [Reply(r.text, r.completion_tokens, r.completion_tokens < max_new_tokens, r.latency_s)
                for r in results]

    def sample(
        self, prompts: list[Messages], system: str | None, k: int, max_new_tokens: int, temperature: float,
        seed: int,
    ) -> list[list[Reply]]:
        """K sampled replies per prompt (one batched pass per candidate, each with its own seed)."""
        sent = [with_persona(p, system, self.native_system) for p in prompts]
        passes = [self._generate(sent, max_new_tokens, seed + 7919 * j, True, temperature) for j in range(k)]
        return [[passes[j][i] for j in range(k)] for i in range(len(prompts))]

    def greedy(self, prompts: list[Messages], max_new_tokens: int) -> list[Reply]:
        """The model's own greedy reply to each prompt, without any system prompt (the plain voice)."""
        return self._generate(prompts, max_new_tokens, 0, False, 1.0)


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def completions_url(url: str) -> str:
    """The chat-completions address of a server given as its root, its /v1, or the full path."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


def check_endpoint(url: str, allow_remote: bool) -> None:
    """Refuse a --teacher URL that is not http(s), or that leaves this machine without --allow-remote-teacher."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DistillError(f"--teacher {url}: expected an http(s) URL or a local model folder")
    if not is_loopback(url) and not allow_remote:
        host = urllib.parse.urlsplit(url).hostname
        raise DistillError(
            f"--teacher {url}: {host} is not this machine; pass --allow-remote-teacher to send prompts there"
        )


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint (llama.cpp server, Ollama, vLLM): one request per candidate."""

    def __init__(self, url: str, model: str | None, timeout: float, allow_remote: bool = False) -> None:
        check_endpoint(url, allow_remote)
        self.url = completions_url(url)
        self.model = model or "default"
        self.timeout = timeout

    def describe(self) -> dict[str, Any]:
        """Kind, address and model name."""
        return {"kind": "endpoint", "url": self.url, "model": self.model, "system_prompt": "system turn"}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
            raise DistillError(f"teacher {self.url}: HTTP {exc.code} {exc.reason}: {detail}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise DistillError(f"teacher {self.url}: no reply within {self.timeout:g} s") from None
            raise DistillError(f"teacher {self.url}: cannot connect ({exc.reason}); is the server running?") from None
        except TimeoutError:
            raise DistillError(f"teacher {self.url}: no reply within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:  # reset or closed mid-reply
            raise DistillError(f"teacher {self.url}: the connection failed ({type(exc).__name__})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DistillError(f"teacher {self.url}: the reply is not JSON (not an OpenAI-compatible server?)") \
                from None

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int) -> Reply:
        began = time.perf_counter()
        data = self._post({
            "model": self.model, "messages": messages, "max_tokens": max_new_tokens,
            "temperature": temperature, "seed": seed, "stream": False,
        })
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise DistillError(f"teacher {self.url}: the reply has no choices[0].message.content") from None
        tokens = (data.get("usage") or {}).get("completion_tokens")
        ended = choice.get("finish_reason") == "stop"
        return Reply(str(text or "").strip(), tokens if isinstance(tokens, int) else None, ended,
                     time.perf_counter() - began)

    def sample(
        self, prompts: list[Messages], system: str | None, k: int, max_new_tokens: int, temperature: float,
        seed: int,
    ) -> list[list[Reply]]:
        """K replies per prompt, one request each (servers differ on the `n` parameter)."""
        return [
            [self._one(with_persona(p, system, True), max_new_tokens, temperature, seed + 7919 * j) for j in range(k)]
            for p in prompts
        ]


def make_teacher(
    spec: str | None, recipe: Recipe, base: LocalTeacher, model: str | None, timeout: float, allow_remote: bool,
    dtype: str, batch_size: int,
) -> Teacher:
    """The teacher a --teacher value names: none (the base model itself), a URL or a model folder."""
    if spec is None:
        return base
    if "://" in spec:
        return EndpointTeacher(spec, model, timeout, allow_remote)
    return LocalTeacher(recipe, spec, dtype, batch_size)
