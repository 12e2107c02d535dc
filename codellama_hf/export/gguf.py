"""HF model folder -> one GGUF file for llama.cpp (and Ollama, LM Studio, llama-cpp-python), with the `gguf` package.

What goes in, and why it is not left to llama.cpp's own heuristics:

- The vocabulary comes from `tokenizer.model` (pieces, scores, SentencePiece piece types), never from
  tokenizer.json: llama.cpp tokenizes code SentencePiece-exactly only from such a vocabulary (docs/stack-notes.md).
  A byte-level BPE base (SmolLM2, Llama 3-style) has no tokenizer.model: its tokenizer.json is written as llama.cpp
  writes GPT-2-style vocabularies, with its FIM tokens' ids (export.gguf_bpe).
- Rope theta (1e6 for Code Llama, 1e4 for Llama 2) and the context length come from config.json.
- The infilling ids are written under llama.cpp's FIM keys (`tokenizer.ggml.fim_pre_token_id` = ▁<PRE>, suffix,
  middle) and ▁<EOT> as `tokenizer.ggml.eot_token_id`, so llama.cpp's /infill needs no guessing from token text.
  A vocabulary without the sentinels (Code Llama - Python, 34B: 32,000 pieces) gets no FIM or EOT keys.
- q_proj/k_proj rows go back to Meta's interleaved rotary layout, which llama.cpp's rope expects: HF's conversion
  script permuted them into halves, llama.cpp's `convert_hf_to_gguf.py` (LlamaModel.permute) undoes that. It is the
  same permutation as `codellama_hf.convert.hf_to_meta_rotary`, per head of q and per KV head of k.
- Norms stay float32; matrices become f16, bf16 or q8_0 (a matrix whose rows are not a multiple of 32 stays f16
  under q8_0, as llama.cpp does).

llama.cpp's infill prompt is not Meta's: its /infill endpoint tokenizes the suffix like any text, so the
implicit-space token 29871 ("▁") precedes it (`<s> ▁<PRE> pre ▁<SUF> ▁ suf ▁<MID>`, 29 tokens where Meta's golden
prompt has 28; docs/stack-notes.md). A GGUF cannot change that; `codellama_hf.load(...).infill` keeps Meta's prompt.

The file is streamed: tensor infos first, then one tensor at a time, to a temporary sibling renamed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codellama_hf.io import read_json_object

logger = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0")


@dataclass(frozen=True)
class LlamaHyper:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rms_eps: float
    theta: float
    tied: bool = False  # one matrix for input and output embeddings (SmolLM2): llama.cpp reuses token_embd

    @classmethod
    def from_config(cls, config: dict, path: Path) -> LlamaHyper:
        arch = config.get("architectures") or []
        if config.get("model_type") != "llama" or (arch and arch != ["LlamaForCausalLM"]):
            raise ValueError(
                f"{path}: model_type {config.get('model_type')!r}, architectures {arch}: only Llama-architecture "
                "models (LlamaForCausalLM, as every Code Llama) can be exported by this command"
            )
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"{path}: rope type {rope.get('rope_type')!r} is not supported (Code Llama uses default)")
        theta = rope.get("rope_theta", config.get("rope_theta"))
        if theta is None:
            raise ValueError(f"{path}: no rope theta (rope_parameters.rope_theta or rope_theta)")
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            ffn=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            context=config.get("max_position_embeddings", 4096),
            rms_eps=config.get("rms_norm_eps", 1e-5),
            theta=float(theta),
            tied=bool(config.get("tie_word_embeddings")),
        )


class _Weights:
    """Tensors of a (possibly sharded) safetensors folder, read one at a time."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json_object(index, "the weight index")["weight_map"].values()))
        else:
            files = ["model.safetensors"] if (folder / "model.safetensors").is_file() else []
        if not files:
            raise FileNotFoundError(f"{folder}: no model.safetensors (or index): not a model folder with weights")
        self.where = {}
        self.handles = [safe_open(str(folder / name), framework="pt") for name in files]
        for handle in self.handles:
            for key in handle.keys():
                self.where[key] = handle

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].get_slice(name).get_shape())

    def read(self, name: str):
        return self.where[name].get_tensor(name)


def _ggml_type(kind: str, shape: tuple[int, ...]):
    import gguf

    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    if kind == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.F16


def _encode(data: np.ndarray, qtype) -> np.ndarray:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def gguf_layout(name: str, tensor, hyper: LlamaHyper):
    """HF tensor -> the layout llama.cpp reads: q/k rows back to Meta's interleaved rotary pairs."""
    from codellama_hf.convert import hf_to_meta_rotary

    if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
        return hf_to_meta_rotary(tensor, hyper.head_dim)  # per head: q's heads and k's KV heads alike
    return tensor


def _vocabulary(proto, rows: int):
    """(pieces, scores, GGUF token types) of the SentencePiece model, padded to the embedding rows like llama.cpp."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    kinds = sp_pb2.ModelProto.SentencePiece
    types = {
        kinds.NORMAL: gguf.TokenType.NORMAL,
        kinds.UNKNOWN: gguf.TokenType.UNKNOWN,
        kinds.CONTROL: gguf.TokenType.CONTROL,
        kinds.USER_DEFINED: gguf.TokenType.USER_DEFINED,
        kinds.UNUSED: gguf.TokenType.UNUSED,
        kinds.BYTE: gguf.TokenType.BYTE,
    }
    pieces = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    token_types = [types[p.type] for p in proto.pieces]
    for i in range(len(pieces), rows):
        pieces.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        token_types.append(gguf.TokenType.UNUSED)
    return pieces, scores, token_types


def infilling_ids(proto) -> dict[str, int] | None:
    """{'prefix', 'suffix', 'middle', 'eot'} ids of the sentinels, or None for a vocabulary without infilling."""
    from codellama_hf.tokenizer import EOT, MIDDLE, PREFIX, SUFFIX

    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    if not all(s in ids for s in (PREFIX, SUFFIX, MIDDLE, EOT)):
        return None
    return {"prefix": ids[PREFIX], "suffix": ids[SUFFIX], "middle": ids[MIDDLE], "eot": ids[EOT]}


def chat_template(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def export_gguf(
    model_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    kind: str = "f16",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model_dir` (an HF Llama folder with tokenizer.model, or with a byte-level BPE tokenizer.json) as a
    GGUF file of type f16, bf16 or q8_0."""
    import gguf

    from codellama_hf.export.model_folder import byte_level_tokenizer, explain_missing_sentencepiece
    from codellama_hf.io import atomic_file, refuse_existing
    from codellama_hf.tokenizer import load_sp_model

    folder, out_file = Path(model_dir), Path(out_file)
    if kind not in GGUF_TYPES:
        raise ValueError(f"GGUF type {kind!r} is not supported; choose one of {', '.join(GGUF_TYPES)}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    hyper = LlamaHyper.from_config(read_json_object(folder / "config.json", "the model config"), folder)
    proto = bpe = None
    if (folder / "tokenizer.model").is_file():
        proto = load_sp_model(folder / "tokenizer.model")
    else:
        bpe = byte_level_tokenizer(folder)
        if bpe is None:
            raise FileNotFoundError(explain_missing_sentencepiece(folder))
    if proto is not None and len(proto.pieces) > hyper.vocab:
        raise ValueError(
            f"{folder}: tokenizer.model has {len(proto.pieces)} pieces but the model only {hyper.vocab} embedding rows"
        )
    refuse_existing(out_file, overwrite)
    weights = _Weights(folder)
    names = _tensor_names(weights, hyper, folder)

    with atomic_file(out_file) as tmp:  # a failure leaves no file, not even a partial one
        writer = gguf.GGUFWriter(tmp, "llama")
        try:
            _write_metadata(writer, folder, hyper, proto or bpe, kind, name)
            plan = []
            for hf_name, gguf_name in names:
                shape = weights.shape(hf_name)
                qtype = _ggml_type(kind, shape)
                if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    dtype = np.dtype(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
                    writer.add_tensor_info(gguf_name, shape, dtype, math.prod(shape) * dtype.itemsize)
                else:
                    nbytes = math.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype))
                    writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
                plan.append((hf_name, qtype))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for hf_name, qtype in plan:  # one tensor in memory at a time
                tensor = gguf_layout(hf_name, weights.read(hf_name), hyper)
                writer.write_tensor_data(_encode(tensor.float().numpy(), qtype))
        finally:
            writer.close()
    logger.info("wrote %s (%s, %d tensors)", out_file, kind, len(plan))
    return out_file


def _tensor_names(weights: _Weights, hyper: LlamaHyper, folder: Path) -> list[tuple[str, str]]:
    import gguf

    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hyper.layers)
    out, unknown = [], []
    for hf_name in weights.names():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # computed from theta, not a weight
        gguf_name = mapping.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        (out.append((hf_name, gguf_name)) if gguf_name else unknown.append(hf_name))
    if unknown:
        raise ValueError(f"{folder}: tensors with no llama.cpp name (not a plain Llama model?): {unknown[:5]}")
    # embeddings, lm_head (absent when tied), final norm, 9 per block
    expected = 2 + 9 * hyper.layers + (not hyper.tied or any(g == "output.weight" for _, g in out))
    if len(out) != expected:
        raise ValueError(f"{folder}: {len(out)} weight tensors, expected {expected} for {hyper.layers} Llama layers")
    return out


def _write_metadata(writer, folder: Path, hyper: LlamaHyper, vocabulary, kind: str, name: str | None) -> None:
    """Model keys, then the tokenizer: `vocabulary` is a SentencePiece ModelProto or a byte-level BPE tokenizer."""
    import gguf

    from codellama_hf.export.gguf_bpe import write_bpe_tokenizer

    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[kind]
    writer.add_name(name or folder.resolve().name)
    writer.add_context_length(hyper.context)
    writer.add_embedding_length(hyper.hidden)
    writer.add_block_count(hyper.layers)
    writer.add_feed_forward_length(hyper.ffn)
    writer.add_head_count(hyper.heads)
    writer.add_head_count_kv(hyper.kv_heads)
    writer.add_rope_dimension_count(hyper.head_dim)
    writer.add_rope_freq_base(hyper.theta)
    writer.add_layer_norm_rms_eps(hyper.rms_eps)
    writer.add_vocab_size(hyper.vocab)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    template = chat_template(folder)
    if template is not None:
        writer.add_chat_template(template)
    if hasattr(vocabulary, "pieces"):
        fim = _write_sentencepiece_tokenizer(writer, vocabulary, hyper.vocab)
    else:
        fim = write_bpe_tokenizer(writer, folder, vocabulary, hyper.vocab)
    if fim is not None:  # llama.cpp's infill keys, the same for both kinds of vocabulary
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, fim["prefix"])
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, fim["suffix"])
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, fim["middle"])
        writer.add_eot_token_id(fim["eot"])


def _write_sentencepiece_tokenizer(writer, proto, rows: int) -> dict[str, int] | None:
    """Add a SentencePiece vocabulary (tokenizer.model) to a GGUFWriter; returns its infilling ids, if any."""
    pieces, scores, token_types = _vocabulary(proto, rows)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    spec = proto.trainer_spec
    writer.add_bos_token_id(spec.bos_id)
    writer.add_eos_token_id(spec.eos_id)
    writer.add_unk_token_id(spec.unk_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    return infilling_ids(proto)
