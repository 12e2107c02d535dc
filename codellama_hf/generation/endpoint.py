"""An OpenAI-compatible completions server as a back end (`vllm serve MODEL`, or any such server).

With a tokenizer (the usual case) prompts go out as token ids (`"prompt": [1, 822, ...]`, which the OpenAI
completions API and vLLM accept), so infilling uses Meta's exact PSM/SPM ids although vLLM has no suffix support,
and every back end sees the same prompt. The request also asks for the generated ids (vLLM's `return_token_ids`
extension); when the server returns them the completion is decoded here exactly as for the HF back end, otherwise
the server's text is used. EOS and ▁<EOT> are passed as `stop_token_ids` (vLLM), stop sequences as `stop`.

Without a tokenizer (`tokenizer=None`) prompts go out as text and the text comes back: for servers of models with
no local tokenizer; infilling then needs a tokenizer. `api="chat"` sends chat messages to /chat/completions instead
(self-instruct's questions for a chat model).

Requests run `concurrency` at a time (the server batches them); the `openai` client retries connection failures,
429 and 5xx with backoff. OPENAI_API_KEY, when set, is sent as the bearer token.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from codellama_hf.generation.base import LENGTH, STOP, Backend, Completion, Decoding, Raw


class EndpointError(RuntimeError):
    """The server cannot be reached or refuses the request."""


def _client(url: str, *, timeout: float, retries: int):
    try:
        import openai
    except ImportError:
        raise ImportError(
            "the openai back end needs the `openai` package: pip install 'codellama_hf[serve]'"
        ) from None
    return openai.OpenAI(
        base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY", timeout=timeout, max_retries=retries
    )


def check_url(url: str) -> str:
    if not re.match(r"^https?://", url):
        raise ValueError(f"--url {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
    if url.rstrip("/").endswith("completions"):
        raise ValueError(f"--url {url!r}: give the base URL (ending in /v1), not an endpoint")
    return url.rstrip("/")


class OpenAIBackend(Backend):
    """See the module docstring."""

    kind = "openai"

    def __init__(
        self,
        url: str,
        *,
        model: str,
        tokenizer=None,
        api: str = "completions",
        concurrency: int = 8,
        request_timeout: float = 600.0,
        retries: int = 3,
    ):
        if api not in ("completions", "chat"):
            raise ValueError(f"api={api!r}: choose 'completions' or 'chat'")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.url, self.model, self.api, self.concurrency = check_url(url), model, api, concurrency
        super().__init__(tokenizer, name=f"{self.url} ({model})")
        self.client = _client(self.url, timeout=request_timeout, retries=retries)

    @classmethod
    def connect(cls, url: str, *, model: str | None = None, tokenizer=None, **kwargs) -> OpenAIBackend:
        """Ask the server which model it serves (unless given); `tokenizer` may be a folder/Hub id to load."""
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if model is None:
            import openai

            client = _client(check_url(url), timeout=30.0, retries=0)
            try:
                served = [m.id for m in client.models.list()]
            except openai.APIError as err:
                raise EndpointError(
                    f"cannot reach the OpenAI-compatible endpoint {url} to list its models ({type(err).__name__}: "
                    f"{err}). Start the server (e.g. `vllm serve MODEL`) or fix --url"
                ) from None
            if not served:
                raise EndpointError(f"{url}/models lists no model; pass --served-model")
            model = served[0]
        return cls(url, model=model, tokenizer=tokenizer, **kwargs)

    def describe(self) -> dict:
        return {**super().describe(), "url": self.url, "served_model": self.model, "api": self.api}

    # -- Backend ---------------------------------------------------------------------------------------------

    def encode(self, prompts):
        if self.tokenizer is None:
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("token-id prompts need a tokenizer (--tokenizer) for the openai back end")
            return list(prompts)
        return super().encode(prompts)

    def complete(self, prompts, decoding: Decoding, *, progress: str | None = None) -> list[list[Completion]]:
        if self.api == "chat" or self.tokenizer is None:  # text (or chat messages) in, text out
            raws = self._generate(list(prompts), decoding, eos=[], progress=progress)
            return [[self._finish([], r, decoding.stop, []) for r in rs] for rs in raws]
        return super().complete(prompts, decoding, progress=progress)

    def infill(self, prefixes, suffixes, decoding: Decoding, **kwargs) -> list[list[Completion]]:
        if self.tokenizer is None:
            raise ValueError(
                "infilling through a server needs the model's tokenizer (--tokenizer) for Meta's prompt ids"
            )
        return super().infill(prefixes, suffixes, decoding, **kwargs)

    def _generate(self, prompts, decoding: Decoding, *, eos: list[int], progress: str | None) -> list[list[Raw]]:
        def one(item: tuple[int, object]) -> list[Raw]:
            index, prompt = item
            seed = None if decoding.seed is None else decoding.seed + index
            return self._request(prompt, decoding, eos, seed)

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, enumerate(prompts)))

    def _request(self, prompt, decoding: Decoding, eos: list[int], seed: int | None) -> list[Raw]:
        import openai

        args = dict(
            model=self.model,
            max_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature if decoding.do_sample else 0.0,
            top_p=decoding.top_p if decoding.do_sample else 1.0,
            stop=list(decoding.stop) or None,
            seed=seed,
        )
        extra = {"stop_token_ids": eos} if eos else {}
        out: list[Raw] = []
        while len(out) < decoding.n:  # a server may return fewer than n choices (TGI): ask again for the rest
            try:
                if self.api == "chat":
                    answer = self.client.chat.completions.create(
                        messages=list(prompt), n=decoding.n - len(out), extra_body=extra or None, **args
                    )
                else:
                    if not isinstance(prompt, str):
                        extra["return_token_ids"] = True
                    answer = self.client.completions.create(
                        prompt=prompt, n=decoding.n - len(out), extra_body=extra or None, **args
                    )
            except openai.APIStatusError as err:
                body = err.response.text[:500]
                raise EndpointError(f"{self.url} refused the request: HTTP {err.status_code} {body}") from None
            except openai.APIConnectionError as err:
                raise EndpointError(
                    f"cannot reach the OpenAI-compatible server {self.url} ({err}). Start it (e.g. `vllm serve "
                    "MODEL`) or fix --url"
                ) from None
            choices = sorted(answer.choices, key=lambda c: c.index)
            if not choices:
                raise EndpointError(f"{self.url} answered without choices")
            out += [self._raw(choice) for choice in choices][: decoding.n - len(out)]
            args["seed"] = None if seed is None else seed + len(out)
        return out

    def _raw(self, choice) -> Raw:
        reason = {"length": LENGTH, "stop": STOP}.get(choice.finish_reason or "", STOP)
        if self.api == "chat":
            return Raw(None, reason, (choice.message.content if choice.message else None) or "")
        ids = (choice.model_extra or {}).get("token_ids")
        if ids is not None and self.tokenizer is not None:
            # vLLM reports a stop id as "stop" too; the shared post-processing tells EOS apart from the ids.
            return Raw([int(i) for i in ids], LENGTH if reason == LENGTH else STOP, choice.text)
        return Raw(None, reason, choice.text or "")
