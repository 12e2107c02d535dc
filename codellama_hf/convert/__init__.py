"""Checkpoint conversion between Meta's `consolidated.NN.pth` format and Hugging Face safetensors, streamed.

Meta distributes Llama 2 and Code Llama as model-parallel shards (fairscale layers in Meta's llama/model.py):
column-parallel weights (wq, wk, wv, w1, w3, output) are split along their rows, row-parallel weights (wo, w2)
and the ParallelEmbedding (tok_embeddings) along their columns, and the RMSNorm weights are replicated. Meta's
rotary embedding rotates interleaved pairs of each head (complex numbers); transformers rotates the two halves of
the head, so the rows of wq and wk are permuted per head (the same permutation transformers' converter applies).

Unlike transformers' convert_llama_weights_to_hf.py, which loads every shard into RAM, we never
hold a whole tensor: shards are opened with `torch.load(mmap=True, weights_only=True)`; bytes that pass unchanged
(most of a bf16 -> bf16 conversion) are copied file to file in the kernel, as `cp` does; the rest (rotary
permutation of wq/wk, column-split merges, dtype changes) is merged a block of rows at a time; each tensor's
mapped pages are dropped from the process once written. Every tensor record is checked against the CRC-32 stored
in the .pth zip (in a thread, one tensor ahead), so a corrupted download is reported rather than converted.
Output is written into a temporary folder and renamed on success.

The reverse direction writes .pth files that are byte-for-byte what `torch.save` writes for the same state dict,
one tensor at a time, so Meta's own `Llama.build` and Meta-format tools run our models.

Modules: `layout` (shapes, tensor placement, rotary permutation), `meta_reader` (Meta shards), `writers`
(safetensors and .pth), `to_hf` and `to_meta` (the two directions); the command is codellama_hf.cli.convert.
"""

from codellama_hf.convert.layout import LlamaShape, ffn_hidden_size, hf_to_meta_rotary, meta_to_hf_rotary, weights
from codellama_hf.convert.meta_reader import MetaCheckpoint, find_shards
from codellama_hf.convert.to_hf import meta_to_hf
from codellama_hf.convert.to_meta import HFWeights, hf_to_meta

__all__ = [
    "HFWeights",
    "LlamaShape",
    "MetaCheckpoint",
    "ffn_hidden_size",
    "find_shards",
    "hf_to_meta",
    "hf_to_meta_rotary",
    "meta_to_hf",
    "meta_to_hf_rotary",
    "weights",
]
