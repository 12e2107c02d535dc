"""Self-instruct generators: a transformers model (batched, through codellama_hf.generation) or an
OpenAI-compatible server (vLLM, TGI: /v1/completions or /v1/chat/completions), behind one `Generator` protocol."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from codellama_hf.selfinstruct.prompts import Prompt

# Generators: HF models and OpenAI-compatible servers


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


class Generator(Protocol):
    """Anything that completes prompts: `n` completions per prompt, each cut before its first stop sequence."""

    name: str

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]: ...


class HFGenerator:
    """A transformers causal LM, batched, through codellama_hf.generation (left padding, stop sequences)."""

    def __init__(self, model, tokenizer, *, name: str | None = None, batch_size: int = 8, chat: bool = False):
        if chat and not tokenizer.chat_template:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; drop --chat-template to "
                "prompt with the paper's raw text"
            )
        self.model, self.tokenizer, self.batch_size, self.chat = model, tokenizer, batch_size, chat
        self.name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs) -> HFGenerator:
        from codellama_hf.generation import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, name=str(path), **kwargs)

    def _text(self, prompt: Prompt) -> str:
        if not self.chat:
            return prompt.text
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False)
        bos = self.tokenizer.bos_token or ""
        return text[len(bos) :] if bos and text.startswith(bos) else text  # generate() adds the BOS itself

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]:
        from codellama_hf.generation import generate

        if not prompts:
            return []
        sample = sampling.temperature > 0
        return generate(
            self.model,
            self.tokenizer,
            [self._text(p) for p in prompts],
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else 1.0,
            top_p=sampling.top_p if sample else 1.0,
            n=n,
            stop=sampling.stop,
            batch_size=self.batch_size,
            seed=seed,
        )


class EndpointError(RuntimeError):
    """The server cannot be reached or refuses the request."""


class OpenAIGenerator:
    """An OpenAI-compatible server (vLLM, TGI, ...): /v1/completions with the raw prompt text, or /v1/chat/completions
    with the turns. Requests run `concurrency` at a time (the server batches them); connection failures and 5xx/429
    answers are retried with exponential backoff, then raise EndpointError. A server that returns fewer than `n`
    choices (TGI) is asked again for the rest. OPENAI_API_KEY, when set, is sent as the bearer token.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api: str = "completions",
        concurrency: int = 8,
        request_timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 2.0,
    ):
        if api not in ("completions", "chat"):
            raise ValueError(f"api={api!r}: choose 'completions' or 'chat'")
        if not re.match(r"^https?://", url):
            raise ValueError(f"--url {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
        if url.rstrip("/").endswith("completions"):
            raise ValueError(f"--url {url!r}: give the base URL (ending in /v1), not an endpoint (see --api)")
        self.base, self.api, self.concurrency = url.rstrip("/"), api, concurrency
        self.request_timeout, self.retries, self.backoff = request_timeout, retries, backoff
        self.model = model or self._served_model()
        self.name = f"{self.base} ({self.model})"

    def _post(self, path: str, payload: dict | None, *, retries: int) -> dict:
        url = f"{self.base}{path}"
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", "replace")[:500]
                if err.code != 429 and err.code < 500:
                    raise EndpointError(f"{url} refused the request: HTTP {err.code} {body}") from None
                problem = f"the OpenAI-compatible endpoint {url} keeps failing: HTTP {err.code} {body}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                problem = f"cannot reach the OpenAI-compatible endpoint {url}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                raise EndpointError(f"{url} did not answer with JSON ({err}); is it OpenAI-compatible?") from None
            if attempt < retries:
                time.sleep(self.backoff * 2**attempt)
        raise EndpointError(
            f"{problem}. Start the server (e.g. `vllm serve MODEL`) or fix --url; finished work is "
            "cached, so rerunning the same command resumes"
        )

    def _served_model(self) -> str:
        """The first model the server lists (vLLM needs the name; TGI ignores it); fails fast when unreachable."""
        models = self._post("/models", None, retries=0).get("data") or []
        if not models:
            raise EndpointError(f"{self.base}/models lists no model; pass --served-model")
        return models[0]["id"]

    def _one(self, prompt: Prompt, n: int, sampling: Sampling, seed: int) -> list[str]:
        payload = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop) or None,
            "seed": seed,
        }
        if self.api == "chat":
            path, payload["messages"] = "/chat/completions", list(prompt.messages)
        else:
            path, payload["prompt"] = "/completions", prompt.text
        texts: list[str] = []
        while len(texts) < n:
            payload["n"] = n - len(texts)
            choices = sorted(
                self._post(path, payload, retries=self.retries).get("choices") or [], key=lambda c: c.get("index", 0)
            )
            if not choices:
                raise EndpointError(f"{self.base}{path} answered without choices")
            texts += [self._text(choice) for choice in choices][: n - len(texts)]
            payload["seed"] = None if seed is None else seed + len(texts)
        return texts

    def _text(self, choice: dict) -> str:
        """A choice's text; None (an empty generation) becomes "" and is counted downstream."""
        if self.api == "chat":
            return (choice.get("message") or {}).get("content") or ""
        return choice.get("text") or ""

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ip: self._one(ip[1], n, sampling, seed + ip[0]), enumerate(prompts)))
