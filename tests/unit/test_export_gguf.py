"""GGUF export: read back with `gguf` (metadata, vocabulary, tensors in llama.cpp's layout), loaded by transformers'
GGUF reader against the HF model's logits, Ollama Modelfiles, bad input, and llama.cpp itself when installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch

from codellama_hf.export.gguf import export_gguf
from codellama_hf.export.ollama import model_kind, modelfile_text
from tests.helpers import cli

GOLDEN_PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '


def _fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(ids).logits


def _permute(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute, written independently: HF halves -> interleaved rotary pairs, per head."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, rows.shape[1]).swapaxes(1, 2).reshape(rows.shape)


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_gguf_round_trip(kind, models, tmp_path):
    from safetensors.torch import load_file

    folder = models["infill"]
    out = export_gguf(folder, tmp_path / f"model-{kind}.gguf", kind=kind)
    reader = gguf.GGUFReader(out)
    fields = _fields(reader)
    config = json.loads((folder / "config.json").read_text())

    assert fields["general.architecture"] == "llama"
    assert fields["llama.context_length"] == config["max_position_embeddings"]
    assert fields["llama.rope.freq_base"] == 1e6
    assert fields["llama.attention.head_count"] == 8 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    # llama.cpp's FIM keys and EOT: ▁<PRE> 32007, ▁<SUF> 32008, ▁<MID> 32009, ▁<EOT> 32010
    assert fields["tokenizer.ggml.fim_pre_token_id"] == 32007
    assert fields["tokenizer.ggml.fim_suf_token_id"] == 32008
    assert fields["tokenizer.ggml.fim_mid_token_id"] == 32009
    assert fields["tokenizer.ggml.eot_token_id"] == 32010
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    # the vocabulary is tokenizer.model's: pieces, scores and piece types
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert np.allclose(fields["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(sp.get_piece_size())])
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[3] == gguf.TokenType.BYTE and types[1000] == gguf.TokenType.NORMAL
    assert [types[i] for i in range(32007, 32011)] == [gguf.TokenType.CONTROL] * 4
    assert types[32000] == gguf.TokenType.UNUSED

    # tensors: HF weights after llama.cpp's q/k permutation, in the requested type (norms stay float32)
    hf = load_file(folder / "model.safetensors")
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == len(hf)
    expected_type = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[kind]
    for hf_name, gguf_name, heads in [
        ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 8),
        ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2),
        ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", None),
        ("model.embed_tokens.weight", "token_embd.weight", None),
        ("lm_head.weight", "output.weight", None),
        ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", None),
        ("model.norm.weight", "output_norm.weight", None),
    ]:
        tensor = by_name[gguf_name]
        want = hf[hf_name].float()
        if heads is not None:
            want = _permute(want, heads)
        got = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type))).reshape(want.shape)
        if want.dim() == 1:
            assert tensor.tensor_type.name == "F32" and torch.equal(got, want)
        elif kind == "q8_0":
            assert tensor.tensor_type.name == expected_type
            again = gguf.quants.dequantize(gguf.quants.quantize(want.numpy(), tensor.tensor_type), tensor.tensor_type)
            assert torch.equal(got, torch.from_numpy(again).reshape(want.shape))  # llama.cpp's exact q8_0 blocks
            torch.testing.assert_close(got, want, rtol=0, atol=want.abs().max().item() / 100)
        else:
            assert tensor.tensor_type.name == expected_type
            torch.testing.assert_close(
                got, want.to(getattr(torch, {"f16": "float16", "bf16": "bfloat16"}[kind])).float()
            )

    # transformers reads the GGUF back (dequantizing and undoing the permutation): the same model. The layout is the
    # same for every type and the tensors of each were checked above, so one read-back (the quantized type) will do:
    # each reading parses the 32,016-piece vocabulary twice, the slowest part of this test
    if kind != "q8_0":
        return
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 32007, 822, 3349, 29918, 5464, 13, 1678, 9995, 29871, 32008, 13, 1678, 736, 32009]])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    assert loaded.config.rope_parameters["rope_theta"] == 1e6
    with torch.no_grad():
        diff = (loaded(ids).logits - _hf_logits(folder, ids)).abs().max().item()
    assert diff < 2e-2, diff


def test_a_python_style_vocabulary_gets_no_fim_keys(models, tmp_path):
    from safetensors.torch import load_file

    folder = models["python"]
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    out = export_gguf(folder, tmp_path / "python.gguf", kind="bf16")
    reader = gguf.GGUFReader(out)
    fields = _fields(reader)
    hf = {name: t for shard in shards for name, t in load_file(shard).items()}
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(hf)
    embd = tensors["token_embd.weight"]
    got = torch.from_numpy(gguf.quants.dequantize(embd.data, embd.tensor_type)).reshape(32000, -1)
    assert torch.equal(got, hf["model.embed_tokens.weight"].float())  # bfloat16 in, bfloat16 out: exact
    assert len(fields["tokenizer.ggml.tokens"]) == 32000
    assert not [k for k in fields if "fim" in k or "eot" in k or k.endswith(("prefix_token_id", "suffix_token_id"))]
    assert model_kind(models["python"]) == "completion"


def test_modelfile_templates_by_kind(tmp_path, models):
    from codellama_hf.chat import CHAT_TEMPLATE
    from codellama_hf.export.model_folder import complete_model_folder

    instruct = tmp_path / "instruct"
    shutil.copytree(models["infill"], instruct)
    complete_model_folder(instruct, chat_template=CHAT_TEMPLATE)
    assert model_kind(instruct) == "instruct"
    text = modelfile_text("m.gguf", "instruct", context=100_000)
    assert "[INST] " in text and " [/INST]" in text and "<<SYS>>\\n" not in text and "<<SYS>>\n" in text
    assert "PARAMETER num_ctx 16384" in text and 'PARAMETER stop "[INST]"' in text
    assert modelfile_text("m.gguf", "completion", context=4096).count("TEMPLATE") == 1
    with pytest.raises(ValueError, match="unknown model kind"):
        modelfile_text("m.gguf", "chat", context=4096)


def test_bad_input_is_a_clear_error_and_leaves_no_file(models, tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ValueError, match="q4_k.*f16, bf16, q8_0"):
        export_gguf(models["infill"], out, kind="q4_k")

    bare = tmp_path / "bare"
    shutil.copytree(models["infill"], bare)
    (bare / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model.*export folder"):
        export_gguf(bare, out)

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=32016)).save_pretrained(gpt2)
    shutil.copyfile(models["infill"] / "tokenizer.model", gpt2 / "tokenizer.model")
    with pytest.raises(ValueError, match="model_type 'gpt2'.*only Llama-architecture"):
        export_gguf(gpt2, out)

    # a failure while tensors are written (disk full, interrupted) leaves neither the file nor a partial one
    import codellama_hf.export.gguf as G

    calls, original = [], G._encode

    def failing(data, qtype):
        calls.append(qtype)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return original(data, qtype)

    monkeypatch.setattr(G, "_encode", failing)
    with pytest.raises(OSError, match="No space"):
        export_gguf(models["infill"], out)
    assert len(calls) == 3 and list(out.parent.iterdir()) == []
    refused = cli("export", "gguf", str(gpt2), "--out", str(out))
    assert refused.returncode == 2 and "only Llama-architecture" in refused.stderr and not out.exists()


GOLDEN_SUFFIX = "\n    return result\n"


def test_llama_cpp_reads_the_gguf_when_installed(models, tmp_path):
    """llama.cpp itself (llama-cpp-python, built from source; skipped where it is not installed): SentencePiece-exact
    tokens, the FIM and EOT ids from the metadata, logits equal to the HF model's, an infill that runs, and the
    Modelfile templates' text tokenized as Meta encodes it (except llama.cpp's extra 29871 before the suffix)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from codellama_hf.chat import prompt_ids
    from codellama_hf.tokenizer import infilling_prompt

    folder = models["infill"]
    out = export_gguf(folder, tmp_path / "m.gguf", kind="f16")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, verbose=False)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    code = 'def f(x):\n    """Doc."""\n\treturn x  # ünï 🙂\n'
    assert llm.tokenize(code.encode(), add_bos=True) == [1, *sp.encode(code)]
    vocab = llm._model
    assert (vocab.token_prefix(), vocab.token_suffix(), vocab.token_middle()) == (32007, 32008, 32009)
    assert (vocab.token_eos(), vocab.token_eot()) == (2, 32010)

    golden = infilling_prompt(AutoTokenizer.from_pretrained(folder), GOLDEN_PREFIX, GOLDEN_SUFFIX)
    llm.eval(golden)
    ours = torch.from_numpy(np.array(llm.scores[: len(golden)]))
    with torch.no_grad():
        torch.testing.assert_close(ours, _hf_logits(folder, torch.tensor([golden]))[0], rtol=0, atol=5e-3)

    # The infill Modelfile template renders "▁<PRE>{prefix}▁<SUF>{suffix}▁<MID>": Meta's ids, plus one 29871.
    infill_text = f"\u2581<PRE>{GOLDEN_PREFIX}\u2581<SUF>{GOLDEN_SUFFIX}\u2581<MID>"
    llama_ids = llm.tokenize(infill_text.encode(), add_bos=True, special=True)
    at = golden.index(32008) + 1
    assert llama_ids == [*golden[:at], 29871, *golden[at:]]
    # The instruct template renders Meta's chat_completion text; llama.cpp gives each text after a special token
    # its implicit space, as Meta's per-turn encode does.
    dialog = [
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "xs[::-1]"},
        {"role": "user", "content": "And a string?"},
    ]
    chat_text = "[INST] Reverse a list. [/INST] xs[::-1] </s><s>[INST] And a string? [/INST]"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert llm.tokenize(chat_text.encode(), add_bos=True, special=True) == prompt_ids(tokenizer, dialog)
    completion = llm.create_completion(GOLDEN_PREFIX, suffix=GOLDEN_SUFFIX, max_tokens=4, temperature=0)
    assert isinstance(completion["choices"][0]["text"], str)
