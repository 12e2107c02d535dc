"""The transformers back end: a KV-cached decoding loop whose batch never waits on its slowest row.

`model.generate` on a static batch runs until the last row stops (bigcode's `EndOfFunctionCriteria` even waits
until *every* row has a stop word), so one row that hits the token cap keeps seven finished rows decoding. Here
rows are scheduled like a continuous-batching server, on the plain HF model and its `DynamicCache`:

    queue: p5 p6 p7 ...          step t                        step t+1
    row 0  [pad pad p0 p0 | g g g]  -> eos: leaves the batch  row 0  [pad p4 p4 p4 | g]   (p4 prefilled, merged)
    row 1  [p1 p1 p1 p1 | g g g]    -> continues              row 1  [p1 p1 p1 p1 | g g g g]

- every step, each row is checked on its own: EOS ids, a stop sequence in its decoded tail, or the token cap;
  finished rows are dropped from the cache (`batch_select_indices`);
- free slots are refilled from the queue: the new prompts are prefilled together (left-padded) and their cache is
  left-padded to the running cache's length and concatenated on the batch axis; positions come from the attention
  mask, so padding never shifts RoPE positions; cache columns that are padding for every row are trimmed.

Greedy decoding gives the same tokens as one prompt at a time (tests/unit/test_generation.py); sampling uses
transformers' temperature and top-p warpers.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from codellama_hf.generation.base import EOS, LENGTH, STOP, Backend, Decoding, Raw, pad_id


def attention_implementation() -> str:
    """flash-attention 2 where it can run (CUDA + the flash_attn package), PyTorch SDPA elsewhere."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(model_id: str, *, dtype: str | torch.dtype = "auto", device: str | None = None):
    """(model, tokenizer) from a local folder or Hub id: bf16 on GPU, fp32 on CPU unless `dtype` says otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.io import torch_dtype

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(dtype, auto=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=dtype, attn_implementation=attention_implementation(), device_map=device
    )
    return model.eval(), tokenizer


@dataclass
class _Row:
    index: int  # position in the flat (prompt x sample) list
    generated: list[int] = field(default_factory=list)


class _StopCheck:
    """A row is done once the decoded tail of its generation holds a stop sequence (checked on that row only)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        # Enough trailing tokens to hold the longest stop sequence even if every byte is its own token.
        self.window = 4 * max((len(s) for s in stop), default=0) + 4

    def __call__(self, generated: list[int]) -> bool:
        if not self.stop:
            return False
        tail = self.tokenizer.decode(generated[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop)


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _merge(cache_a, mask_a: torch.Tensor, cache_b, mask_b: torch.Tensor, config):
    """Concatenate two left-padded batches on the batch axis, left-padding the shorter cache (and mask)."""
    from transformers import DynamicCache

    width = max(mask_a.shape[1], mask_b.shape[1])
    layers = [
        (
            torch.cat([_pad_left(ka, width, -2), _pad_left(kb, width, -2)]),
            torch.cat([_pad_left(va, width, -2), _pad_left(vb, width, -2)]),
        )
        for (ka, va), (kb, vb) in zip(_layers(cache_a), _layers(cache_b), strict=True)
    ]
    mask = torch.cat([_pad_left(mask_a, width, 1), _pad_left(mask_b, width, 1)])
    return DynamicCache(layers, config=config), mask


def _trim(cache, mask: torch.Tensor, config):
    """Drop leading cache columns that are padding in every row."""
    from transformers import DynamicCache

    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start == 0:
        return cache, mask
    layers = [(k[..., start:, :], v[..., start:, :]) for k, v in _layers(cache)]
    return DynamicCache(layers, config=config), mask[:, start:]


class HFBackend(Backend):
    """A transformers causal LM in this process (see the module docstring for the scheduling)."""

    kind = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8, name: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(tokenizer, name=name or str(getattr(model, "name_or_path", "") or type(model).__name__))
        self.model, self.batch_size = model, batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, dtype="auto", device: str | None = None, batch_size: int = 8):
        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, batch_size=batch_size, name=str(path))

    def describe(self) -> dict:
        return {**super().describe(), "batch_size": self.batch_size, "scheduling": "refill"}

    def vocab_size(self) -> int | None:
        return self.model.get_input_embeddings().num_embeddings

    def _pick(self, logits: torch.Tensor, decoding: Decoding, warpers) -> torch.Tensor:
        logits = logits.float()
        if not decoding.do_sample:
            return logits.argmax(dim=-1)
        scores = warpers(None, logits)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    def _prefill(self, prompts: list[list[int]], pad: int, config):
        from transformers import DynamicCache

        ids, mask = _left_pad(prompts, pad, self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        return out.cache, mask, out.logits[:, -1, :]

    @torch.inference_mode()
    def _generate(
        self, prompts: list[list[int]], decoding: Decoding, *, eos: list[int], progress: str | None
    ) -> list[list[Raw]]:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        if decoding.seed is not None:
            torch.manual_seed(decoding.seed)
        warpers = LogitsProcessorList(
            [TemperatureLogitsWarper(decoding.temperature), TopPLogitsWarper(decoding.top_p)]
            if decoding.do_sample
            else []
        )
        flat = [p for p in prompts for _ in range(decoding.n)]
        results: list[Raw | None] = [None] * len(flat)
        # Longest prompts first, so the first batches are evenly padded; refills then take what is left.
        queue = deque(sorted(range(len(flat)), key=lambda i: -len(flat[i])))
        eos_set, stop_check, pad = set(eos), _StopCheck(self.tokenizer, decoding.stop), pad_id(self.tokenizer)
        config = self.model.config
        rows: list[_Row] = []  # running rows, in cache order
        cache = mask = None
        bar = tqdm(total=len(flat), desc=progress, disable=progress is None, unit="sample")

        def settle(batch: list[_Row], tokens: torch.Tensor) -> list[int]:
            """Append each row's new token, record the rows that finished, return the indices of the others."""
            keep = []
            for j, (row, token) in enumerate(zip(batch, tokens.tolist(), strict=True)):
                row.generated.append(token)
                if token in eos_set:
                    reason = EOS
                elif stop_check(row.generated):
                    reason = STOP
                elif len(row.generated) >= decoding.max_new_tokens:
                    reason = LENGTH
                else:
                    keep.append(j)
                    continue
                results[row.index] = Raw(row.generated, reason)
                bar.update(1)
            return keep

        while queue or rows:
            if queue and len(rows) < self.batch_size:  # refill free slots from the queue
                new = [_Row(queue.popleft()) for _ in range(min(self.batch_size - len(rows), len(queue)))]
                new_cache, new_mask, logits = self._prefill([flat[row.index] for row in new], pad, config)
                keep = settle(new, self._pick(logits, decoding, warpers))
                new, new_cache, new_mask = self._select(new, new_cache, new_mask, keep, config)
                if new and rows:
                    cache, mask = _merge(cache, mask, new_cache, new_mask, config)
                elif new:
                    cache, mask = new_cache, new_mask
                rows += new
                continue
            # One decoding step for every running row; its pending token is the last one it generated.
            tokens = torch.tensor([row.generated[-1] for row in rows], dtype=torch.long, device=self.model.device)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            keep = settle(rows, self._pick(out.logits[:, -1, :], decoding, warpers))
            rows, cache, mask = self._select(rows, out.cache, mask, keep, config)
        bar.close()
        return [results[i * decoding.n : (i + 1) * decoding.n] for i in range(len(prompts))]

    @staticmethod
    def _select(rows, cache, mask, keep: list[int], config):
        if len(keep) == len(rows):
            return rows, cache, mask
        rows = [rows[j] for j in keep]
        if not rows:
            return [], None, None
        index = torch.tensor(keep, dtype=torch.long, device=mask.device)
        cache.batch_select_indices(index)
        cache, mask = _trim(cache, mask[index], config)
        return rows, cache, mask
