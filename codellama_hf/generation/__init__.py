"""Generation for Code Llama models: one interface (`Backend`), three back ends, one post-processing.

- `hf`: a transformers model in this process, rows refilled as they finish (generation/hf.py);
- `vllm`: vLLM's `LLM` in this process, token-id prompts (generation/vllm_engine.py; optional dependency);
- `openai`: any OpenAI-compatible completions server such as `vllm serve`, token-id prompts when a tokenizer is
  given (generation/endpoint.py).

Prompts, stop handling and decoding of completions live in generation/base.py and are the same for all three.
`generate()` and `infill()` below are the short form for an HF model and tokenizer (used by `codellama_hf.load`).
"""

from __future__ import annotations

from collections.abc import Sequence

from codellama_hf.generation.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    EOS,
    LENGTH,
    STOP,
    Backend,
    Completion,
    Decoding,
    Raw,
    pad_id,
    truncate_at_stop,
)

BACKENDS = ("hf", "vllm", "openai")
_HF = ("HFBackend", "attention_implementation", "load_model")


def __getattr__(name: str):
    """The HF back end (and torch with it) is imported on first use, so CLIs that only parse flags start fast."""
    if name in _HF:
        from codellama_hf.generation import hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "EOS",
    "LENGTH",
    "STOP",
    "Backend",
    "Completion",
    "Decoding",
    "HFBackend",
    "Raw",
    "attention_implementation",
    "generate",
    "get_backend",
    "infill",
    "load_model",
    "pad_id",
    "truncate_at_stop",
]


def get_backend(
    kind: str,
    model: str | None = None,
    *,
    url: str | None = None,
    served_model: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    batch_size: int = 8,
    concurrency: int = 8,
    seed: int = 0,
) -> Backend:
    """A back end by name, as the CLIs build it (`--backend hf|vllm|openai`)."""
    if kind == "hf":
        from codellama_hf.generation.hf import HFBackend

        if not model:
            raise ValueError("--backend hf needs --model (a folder or Hub id)")
        return HFBackend.from_pretrained(model, dtype=dtype, device=device, batch_size=batch_size)
    if kind == "vllm":
        from codellama_hf.generation.vllm_engine import VLLMBackend

        if not model:
            raise ValueError("--backend vllm needs --model (a folder or Hub id)")
        return VLLMBackend.from_pretrained(model, dtype=dtype, seed=seed)
    if kind == "openai":
        from codellama_hf.generation.endpoint import OpenAIBackend

        if not url:
            raise ValueError("--backend openai needs --url, the server's base URL (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend.connect(url, model=served_model, tokenizer=tokenizer or model, concurrency=concurrency)
    raise ValueError(f"unknown generation back end {kind!r}; choose one of {', '.join(BACKENDS)}")


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    n: int = 1,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    seed: int | None = None,
    progress: str | None = None,
) -> list[list[str]]:
    """`n` completion texts for each prompt, each cut before its first stop sequence (HF back end)."""
    from codellama_hf.generation.hf import HFBackend

    decoding = Decoding(max_new_tokens, do_sample, temperature, top_p, n, seed, tuple(stop))
    out = HFBackend(model, tokenizer, batch_size=batch_size).complete(list(prompts), decoding, progress=progress)
    return [[c.text for c in cs] for cs in out]


def infill(
    model,
    tokenizer,
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    *,
    suffix_first: bool = False,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    batch_size: int = 8,
    seed: int | None = None,
    progress: str | None = None,
) -> list[str]:
    """The middle between each prefix and suffix, in Meta's PSM (or SPM with `suffix_first`) format."""
    from codellama_hf.generation.hf import HFBackend

    decoding = Decoding(max_new_tokens, do_sample, temperature, top_p, 1, seed)
    out = HFBackend(model, tokenizer, batch_size=batch_size).infill(
        prefixes, suffixes, decoding, suffix_first=suffix_first, progress=progress
    )
    return [cs[0].text for cs in out]
