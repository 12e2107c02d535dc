"""Attention backends for packed training rows: which one runs, and the inputs that keep packed documents apart.

A packed row holds several documents end to end (codellama_hf/packing.py). Every backend must see the same
boundaries, but each reads them from a different input:

    row 0  a a a b b b b .      position_ids  0 1 2 0 1 2 3 0    (padding: a segment of its own)
    row 1  c c c c c d d d                    0 1 2 3 4 0 1 2

    eager, sdpa       position_ids -> transformers builds a dense B x 1 x L x L block-diagonal causal mask
                      (L*L per row: 268 MB at 16k, and SDPA's flash kernel cannot take a custom mask)
    flex_attention    position_ids -> document ids -> a BlockMask; blocks wholly outside a document are skipped
    flash_attention   cu_seq_lens over the flattened batch, [0 3 7 8 13 16], and the longest segment (5):
                      the varlen kernel's own arguments (as transformers' DataCollatorWithFlattening gives them)

transformers 5 infers the varlen layout from position_ids only when the batch holds ONE row
(`_is_packed_sequence` in modeling_flash_attention_utils.py); at micro-batch 2 or more, rows without
`cu_seq_lens_*` run the dense flash kernel and documents attend to each other. `packed_attention_inputs` always
passes them, so any micro-batch is exact; `check_packed_batch` refuses a batch that would mix documents.

On a machine without CUDA the flash path is checked with `flash_attention_emulation`: transformers' own
flash-attention integration (`flash_attention_forward` -> `_flash_attention_forward`) with the two kernels it
calls replaced by plain-torch functions that take flash-attn's arguments (int32 cu_seqlens, max_seqlen) and
compute exactly the attention those arguments describe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

FLASH_BACKENDS = ("flash_attention_2", "flash_attention_3")
BACKENDS = ("auto", "sdpa", "eager", "flex_attention", *FLASH_BACKENDS)
EMULATED_FLASH = "flash_attention_emulated"  # the CPU stand-in registered by flash_attention_emulation()
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def is_flash(backend: str) -> bool:
    """transformers' own rule (`is_flash_attention_requested`): any implementation named *flash* runs the
    flash-attention integration, whose varlen kernel needs cu_seq_lens to keep packed rows apart."""
    return "flash" in backend


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _flex_available() -> bool:
    from transformers.utils import is_torch_flex_attn_available

    return is_torch_flex_attn_available()


def resolve_attn_implementation(name: str, *, report: Callable[[str], None] | None = None) -> str:
    """The attention implementation to load the model with; 'auto' picks one and says which (through `report`).

    auto: flash_attention_2 on CUDA with the flash-attn package, flex_attention on other CUDA machines (PyTorch's
    block-sparse kernel: no dense mask), sdpa on CPU. A named backend that cannot run here is an error, never a
    silent fallback (transformers would otherwise fetch a flash kernel from the Hub, or drop to sdpa).
    """
    report = report or logger.info
    if name == EMULATED_FLASH:
        return name
    if name not in BACKENDS:
        raise ValueError(
            f"attn_implementation={name!r}: packed training supports {', '.join(BACKENDS)} "
            "(other implementations are not known to keep packed documents apart)"
        )
    cuda = torch.cuda.is_available()
    if name == "auto":
        if cuda and _installed("flash_attn"):
            chosen, why = "flash_attention_2", "CUDA with the flash-attn package: varlen kernel, no mask"
        elif cuda and _flex_available():
            chosen, why = "flex_attention", "CUDA without flash-attn: PyTorch's block-sparse document mask"
        elif cuda:
            chosen, why = "sdpa", "CUDA, but neither flash-attn nor flex attention in this PyTorch: dense mask"
        else:
            chosen, why = "sdpa", "no CUDA"
        report(f"attn_implementation auto -> {chosen} ({why})")
        return chosen
    if is_flash(name):
        if not cuda:
            raise ValueError(
                f"attn_implementation={name}: flash-attention runs on CUDA GPUs only and this machine has none; "
                "use auto (sdpa here) or sdpa"
            )
        if not _installed(_FLASH_PACKAGES[name]):
            raise ValueError(
                f"attn_implementation={name}: the {_FLASH_PACKAGES[name]} package is not installed "
                f"(pip install {_FLASH_PACKAGES[name].replace('_', '-')} --no-build-isolation); or use "
                "flex_attention, which ships with PyTorch, or auto"
            )
    if name == "flex_attention" and not _flex_available():
        raise ValueError(
            "attn_implementation=flex_attention: this PyTorch has no torch.nn.attention.flex_attention; "
            "upgrade PyTorch or use auto"
        )
    if name in ("sdpa", "eager") and cuda:
        report(
            f"attn_implementation={name} on CUDA: packed rows need a dense B x 1 x L x L mask (L*L bytes per row) "
            "and SDPA cannot use its flash kernel with it; flex_attention or flash_attention_2 skip masked blocks"
        )
    return name


def _segments(seq_lengths_per_row: Sequence[Sequence[int]], seq_len: int) -> list[list[int]]:
    """Each row's segment lengths: its documents, then the padding tail as one more segment."""
    rows = []
    for b, lengths in enumerate(seq_lengths_per_row):
        lengths = [int(n) for n in lengths]
        if any(n <= 0 for n in lengths):
            raise ValueError(f"row {b}: document lengths must be positive, got {lengths}")
        used = sum(lengths)
        if used > seq_len:
            raise ValueError(f"row {b}: documents of {used} tokens do not fit a row of {seq_len}")
        rows.append(lengths + ([seq_len - used] if used < seq_len else []))
    return rows


def packed_attention_inputs(seq_lengths_per_row: Sequence[Sequence[int]], backend: str, *, seq_len: int) -> dict:
    """What `backend` needs to keep the documents of packed rows apart, at any number of rows.

    Always `position_ids` (B x seq_len, restarting at 0 per document; RoPE reads them, and eager/sdpa/flex derive
    their document mask from them). For flash backends also `cu_seq_lens_q/k` (int32 offsets of every segment in
    the flattened B*seq_len tokens; a row boundary is a segment boundary) and `max_length_q/k` (the longest
    segment, a Python int), which transformers hands to `flash_attn_varlen_func`.
    """
    if backend == "auto":
        raise ValueError("resolve attn_implementation 'auto' first (resolve_attn_implementation)")
    segments = _segments(seq_lengths_per_row, seq_len)
    sizes = np.array([n for row in segments for n in row], dtype=np.int64)
    # 0..n-1 for every segment at once: each token's flat index minus its segment's first index
    position_ids = torch.from_numpy(np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    inputs = {"position_ids": position_ids.view(len(segments), seq_len)}
    if is_flash(backend):
        flat = [n for row in segments for n in row]
        cu = torch.zeros(len(flat) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(flat, dtype=torch.int32), 0)
        longest = max(flat, default=0)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=longest, max_length_k=longest)
    return inputs


def check_packed_batch(batch: dict, backend: str) -> None:
    """Refuse a collated batch of packed rows that `backend` would run with attention across documents."""
    ids = batch.get("input_ids")
    rows = ids.shape[0] if ids is not None else 1
    if "position_ids" not in batch:
        raise ValueError("packed rows need position_ids (one segment per document); the collator gave none")
    if batch.get("attention_mask") is not None:
        raise ValueError(
            "packed rows came with an attention_mask: transformers then ignores the document boundaries in "
            "position_ids and every token attends to the whole row; the collator must not return one"
        )
    if is_flash(backend):
        needed = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
        missing = [k for k in needed if batch.get(k) is None]
        if missing and rows > 1:
            raise ValueError(
                f"attn_implementation={backend} at micro-batch {rows}: the batch has no {', '.join(missing)}, so "
                "flash-attention would attend across packed documents (transformers infers them from "
                "position_ids only for a single row). Build the batch with codellama_hf.attention."
                "packed_attention_inputs, or set per_device_train_batch_size 1"
            )
        if not missing:
            cu = batch["cu_seq_lens_q"]
            total = rows * batch["position_ids"].shape[-1]
            if cu.dtype != torch.int32 or int(cu[-1]) != total:
                raise ValueError(
                    f"cu_seq_lens_q must be int32 offsets ending at the {total} tokens of the batch, got "
                    f"{cu.dtype} ending at {int(cu[-1])}"
                )


# ---------------------------------------------------------------------------------------------------------------
# flash-attention's kernels in plain torch, for machines without CUDA
# ---------------------------------------------------------------------------------------------------------------


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, causal: bool) -> torch.Tensor:
    """One sequence: q (Lq, Hq, D), k/v (Lk, Hk, D), Hq a multiple of Hk (grouped-query attention); causal aligned
    to the bottom-right corner when Lq != Lk, as flash-attn does since 2.1."""
    lq, lk = q.shape[0], k.shape[0]
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq) if causal and lq != lk else None
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and lq == lk, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    deterministic=False,
):
    """flash_attn.flash_attn_varlen_func's contract: q (total_q, Hq, D) holds sequences at cu_seqlens_q offsets."""
    for name, cu, tokens, longest in (
        ("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
        ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k),
    ):
        if cu.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32, got {cu.dtype}")  # as the CUDA kernel checks
        if int(cu[0]) != 0 or int(cu[-1]) != tokens:
            raise RuntimeError(f"{name} must run from 0 to the {tokens} tokens, got {cu.tolist()}")
        if int(cu.diff().max()) > int(longest):
            raise RuntimeError(f"a sequence is longer than max_seqlen ({int(longest)}): the kernel would cut it")
    if dropout_p or softcap or tuple(window_size) != (-1, -1):
        raise NotImplementedError("the emulation covers dropout 0, no softcap and no sliding window")
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        out[qs:qe] = _attend(q[qs:qe], k[ks:ke], v[ks:ke], softmax_scale, causal).to(q.dtype)
    return out


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False
):
    """flash_attn.flash_attn_func's contract: q (B, L, Hq, D), every row one sequence."""
    if dropout_p or softcap or tuple(window_size) != (-1, -1):
        raise NotImplementedError("the emulation covers dropout 0, no softcap and no sliding window")
    return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])]).to(q.dtype)


@contextlib.contextmanager
def flash_attention_emulation(name: str = EMULATED_FLASH):
    """Register `name` as an attention implementation that runs transformers' flash-attention integration on the
    plain-torch kernels above; load a model with attn_implementation=name inside the block.

    The registration goes through transformers' AttentionInterface (and its mask interface, as flash's); the
    kernels are supplied where transformers imports them (`_lazy_imports`), so everything transformers decides
    (varlen or not, which cu_seqlens) is its own code, and the kernel receives exactly the arguments flash-attn's
    CUDA kernel would.
    """
    import transformers.modeling_flash_attention_utils as fa
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    if not is_flash(name):
        raise ValueError(f"{name!r}: transformers routes only implementations named *flash* through flash-attention")
    original = fa._lazy_imports

    def lazy_imports(implementation, *args, **kwargs):
        if implementation == name:
            return flash_attn_func, flash_attn_varlen_func, None, fa._pad_input, fa._unpad_input
        return original(implementation, *args, **kwargs)

    AttentionInterface.register(name, flash_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    fa._lazy_imports = lazy_imports
    try:
        yield name
    finally:
        fa._lazy_imports = original
        if fa._loaded_implementation == name:
            fa._loaded_implementation = None
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def prepare_collator(collator, dataset, micro_batch: int, backend: str) -> None:
    """Point a packed-row collator at the model's backend and check its first micro-batch before the first step.

    Collators that build attention inputs with `packed_attention_inputs` carry an `attn_implementation` attribute
    (their first batch is checked unless the rows are streamed); any other collator is accepted only if its first
    batch keeps documents apart under `backend` (check_packed_batch).
    """
    import itertools

    ours = hasattr(collator, "attn_implementation")
    if ours:
        collator.attn_implementation = backend
        if not hasattr(dataset, "__len__"):  # a stream: reading rows here would start it (and fill its buffer)
            return
    rows = list(itertools.islice(iter(dataset), micro_batch))
    if rows:
        check_packed_batch(collator(rows), backend)
