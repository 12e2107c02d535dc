"""Self-instruct generators: the paper's prompts through a shared generation back end (codellama_hf.generation).

`HFGenerator` (transformers, refilled batches), `VLLMGenerator` (vLLM in this process) and `OpenAIGenerator`
(an OpenAI-compatible server: vLLM, TGI; /v1/completions, or /v1/chat/completions with `api="chat"`) are the same
adapter around three back ends: same stop handling and post-processing as evaluation. With `chat=True` the
prompt's turns go through the model's chat template (Code Llama - Instruct's with Meta's exact ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from codellama_hf.generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Backend, Decoding
from codellama_hf.generation.endpoint import EndpointError, OpenAIBackend
from codellama_hf.selfinstruct.prompts import Prompt

__all__ = ["BackendGenerator", "EndpointError", "Generator", "HFGenerator", "OpenAIGenerator", "Sampling"]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def decoding(self, n: int, seed: int | None) -> Decoding:
        sample = self.temperature > 0
        return Decoding(
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            temperature=self.temperature if sample else DEFAULT_TEMPERATURE,
            top_p=self.top_p if sample else DEFAULT_TOP_P,
            n=n,
            seed=seed,
            stop=self.stop,
        )


class Generator(Protocol):
    """Anything that completes prompts: `n` completions per prompt, each cut before its first stop sequence."""

    name: str

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]: ...


class BackendGenerator:
    """Self-instruct prompts (raw text, or chat turns) through any codellama_hf.generation back end."""

    def __init__(self, backend: Backend, *, chat: bool = False):
        tokenizer = backend.tokenizer
        if chat and getattr(backend, "api", None) != "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; drop --chat-template to "
                "prompt with the paper's raw text"
            )
        self.backend, self.chat, self.name = backend, chat, backend.name

    def _prompt(self, prompt: Prompt):
        if getattr(self.backend, "api", None) == "chat":
            return list(prompt.messages)  # the server applies its template
        if self.chat:
            from codellama_hf.chat import chat_prompt_ids

            return chat_prompt_ids(self.backend.tokenizer, prompt.messages)
        return prompt.text

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]:
        if not prompts:
            return []
        answers = self.backend.complete([self._prompt(p) for p in prompts], sampling.decoding(n, seed))
        return [[c.text for c in cs] for cs in answers]


class HFGenerator(BackendGenerator):
    """A transformers causal LM in this process (codellama_hf.generation.HFBackend)."""

    def __init__(self, model, tokenizer, *, name: str | None = None, batch_size: int = 8, chat: bool = False):
        from codellama_hf.generation import HFBackend

        super().__init__(HFBackend(model, tokenizer, batch_size=batch_size, name=name), chat=chat)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs) -> HFGenerator:
        from codellama_hf.generation import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, name=str(path), **kwargs)


class VLLMGenerator(BackendGenerator):
    """vLLM in this process (optional dependency; codellama_hf.generation.vllm_engine)."""

    def __init__(self, path: str, *, dtype: str = "auto", seed: int = 0, chat: bool = False):
        from codellama_hf.generation.vllm_engine import VLLMBackend

        super().__init__(VLLMBackend.from_pretrained(path, dtype=dtype, seed=seed), chat=chat)


class OpenAIGenerator(BackendGenerator):
    """An OpenAI-compatible server. Text prompts (the paper's figures) unless `tokenizer` is given, then token ids;
    `api="chat"` sends the turns to /chat/completions and the server applies the model's template."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api: str = "completions",
        concurrency: int = 8,
        tokenizer=None,
        request_timeout: float = 600.0,
        retries: int = 3,
    ):
        backend = OpenAIBackend.connect(
            url,
            model=model,
            tokenizer=tokenizer,
            api=api,
            concurrency=concurrency,
            request_timeout=request_timeout,
            retries=retries,
        )
        super().__init__(backend, chat=api == "chat")

    @property
    def model(self) -> str:
        return self.backend.model
