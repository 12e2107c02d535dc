"""Generation for Code Llama models: batched left-padded completion with stop sequences, and infilling.

This is the project's one generation layer (evaluation and `codellama_hf.load()` both call it):

- `generate(model, tokenizer, prompts, ...)` -> one list of `n` completions per prompt. Greedy, or sampling with
  temperature/top-p (the paper's protocol: greedy pass@1, T=0.8/p=0.95 for pass@10/100). Generation of a sequence
  stops once its new text contains a stop sequence, and the completion is cut before the first one (bigcode's
  post-processing). Completions are the decoded full sequence minus the decoded prompt, so SentencePiece's leading
  space of the first new token is kept.
- `infill(model, tokenizer, prefixes, suffixes, ...)` -> the middles. Prompts are Meta's exact PSM/SPM token
  layouts (`codellama_hf.tokenizer.infilling_prompt`), generation stops at ▁<EOT> (or EOS) and the middle is
  decoded with Meta's `decode_infilling`.

Our tokenizers have no pad token: a pad id (unk, else eos) is used in memory only; padded positions are masked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria

from codellama_hf.io import torch_dtype
from codellama_hf.tokenizer import decode_infilling, infill_ids, infilling_prompt

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.8, 0.95


def attention_implementation() -> str:
    """flash-attention 2 where it can run (CUDA + the flash_attn package), PyTorch SDPA elsewhere."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(model_id: str, *, dtype: str | torch.dtype = "auto", device: str | None = None):
    """(model, tokenizer) from a local folder or Hub id: bf16 on GPU, fp32 on CPU unless `dtype` says otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(dtype, auto=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=dtype, attn_implementation=attention_implementation(), device_map=device
    )
    return model.eval(), tokenizer


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("tokenizer has no pad, unk or eos token to pad batches with")


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` before the earliest occurrence of any stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class _StopOnText(StoppingCriteria):
    """Per sequence: done once the text generated after `start` contains a stop sequence."""

    def __init__(self, tokenizer, stop: Sequence[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, [s for s in stop if s], start
        # Enough trailing tokens to hold the longest stop sequence even if every byte is its own token.
        self.window = 4 * max(len(s) for s in self.stop) + 4

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, self.start :][:, -self.window :]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _generation_config(
    tokenizer, *, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, eos: list[int]
) -> GenerationConfig:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id(tokenizer),
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _run_batches(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    config: GenerationConfig,
    *,
    stop: Sequence[str],
    batch_size: int,
    progress: str | None,
) -> list[list[int]]:
    """Generated ids (cut at the first eos) for each prompt, batching similar lengths together."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    eos = set(config.eos_token_id)
    out: list[list[int]] = [[] for _ in prompt_ids]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        ids, mask = _left_pad([prompt_ids[i] for i in batch], config.pad_token_id, model.device)
        criteria = [_StopOnText(tokenizer, stop, ids.shape[1])] if any(stop) else None
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria
            )
        for row, index in zip(generated[:, ids.shape[1] :].tolist(), batch, strict=False):
            end = next((j for j, token in enumerate(row) if token in eos), len(row))
            out[index] = row[:end]
    return out


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
    """`n` completions for each prompt (see the module docstring); each is cut before its first stop sequence."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > 1 and not do_sample:
        raise ValueError("n > 1 samples per prompt needs do_sample=True (greedy decoding would repeat itself)")
    if seed is not None:
        torch.manual_seed(seed)
    config = _generation_config(
        tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        eos=[tokenizer.eos_token_id],
    )
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    expanded = [ids for ids in encoded for _ in range(n)]
    generated = _run_batches(model, tokenizer, expanded, config, stop=stop, batch_size=batch_size, progress=progress)
    completions = []
    for prompt, gen in zip(expanded, generated, strict=False):
        head = tokenizer.decode(prompt, skip_special_tokens=True)
        full = tokenizer.decode(prompt + gen, skip_special_tokens=True)
        text = full[len(head) :] if full.startswith(head) else tokenizer.decode(gen, skip_special_tokens=True)
        completions.append(truncate_at_stop(text, stop))
    return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]


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
    if len(prefixes) != len(suffixes):
        raise ValueError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
    ids = infill_ids(tokenizer)  # clear ValueError for a tokenizer without infilling pieces
    vocab = model.get_input_embeddings().num_embeddings
    if max(ids.prefix, ids.suffix, ids.middle, ids.eot) >= vocab:
        raise ValueError(
            f"the model's vocabulary ({vocab} tokens) has no infilling tokens (ids {ids.prefix}-"
            f"{ids.eot}): it was not trained for infilling"
        )
    if seed is not None:
        torch.manual_seed(seed)
    config = _generation_config(
        tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        eos=[ids.eos, ids.eot],
    )
    prompts = [
        infilling_prompt(tokenizer, p, s, suffix_first=suffix_first) for p, s in zip(prefixes, suffixes, strict=False)
    ]
    generated = _run_batches(model, tokenizer, prompts, config, stop=(), batch_size=batch_size, progress=progress)
    return [decode_infilling(tokenizer, gen) for gen in generated]
