"""FIM on a byte-level BPE base: SmolLM2's real tokenizer gets <PRE> <SUF> <MID> <EOT> at ids 49152-49155, prompts
and training samples use the BPE layout (no SentencePiece space trick, no BOS SmolLM2 does not add), `load().infill()`
uses that layout, and a tokenizer that cannot take the tokens is refused with a clear error."""

from __future__ import annotations

import shutil

import pytest
import torch

from codellama_hf.tokenizer import (
    BPE_SENTINELS,
    BYTE_LEVEL,
    SENTENCEPIECE,
    add_fim_tokens,
    decode_infilling,
    encode,
    encode_infilling,
    infill_ids,
    infilling_prompt,
    supports_infilling,
    tokenizer_kind,
)
from tests.helpers import cli

PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '
SUFFIX = "\n    return result\n"


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir():
    from codellama_hf.assets import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="module")
def fim_tokenizer_dir(smollm2_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "smollm2-fim"
    done = cli("tokenizer", "--add-fim", str(smollm2_tokenizer_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "<PRE>=49152, <SUF>=49153, <MID>=49154, <EOT>=49155" in done.stdout
    return out


def _plain(tokenizer, text):
    """The base tokenizer's own encoding of text, without special tokens (what a BPE base saw in pretraining)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def test_fim_tokens_get_the_documented_ids_and_survive_a_save(smollm2_tokenizer_dir, fim_tokenizer_dir):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    assert tokenizer_kind(base) == BYTE_LEVEL and not supports_infilling(base) and len(base) == 49152
    with pytest.raises(ValueError, match=r"has no FIM tokens .*codellama-hf tokenizer --add-fim"):
        infill_ids(base)
    tok = AutoTokenizer.from_pretrained(fim_tokenizer_dir)
    assert len(tok) == 49156 and supports_infilling(tok)
    ids = infill_ids(tok)
    assert (ids.prefix, ids.suffix, ids.middle, ids.eot) == (49152, 49153, 49154, 49155)
    assert ids.bos is None  # SmolLM2 adds no BOS, so the layout has none
    assert ids.eos == base.eos_token_id
    # every base token keeps its id: the base model's rows stay valid
    assert all(tok.convert_tokens_to_ids(p) == i for p, i in list(base.get_vocab().items())[:2000])


def test_bpe_layout_has_no_space_trick_and_matches_the_base_encoding(fim_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fim_tokenizer_dir)
    pre, suf, mid = _plain(tok, PREFIX), _plain(tok, SUFFIX), _plain(tok, "result = ''.join(c for c in s)")
    assert encode(tok, PREFIX) == encode_infilling(tok, PREFIX) == pre  # byte-level: no implicit leading space
    assert infilling_prompt(tok, PREFIX, SUFFIX) == [49152, *pre, 49153, *suf, 49154]
    assert infilling_prompt(tok, PREFIX, SUFFIX, suffix_first=True) == [49152, 49153, *suf, 49154, *pre]
    assert decode_infilling(tok, [*mid, 49155]) == "result = ''.join(c for c in s)"
    assert decode_infilling(tok, _plain(tok, " x")) == " x"  # a leading space is kept, as Meta's decode_infilling
    # text that spells a special token is ordinary bytes in documents and prompts
    sneaky = encode(tok, "<PRE> <|im_start|> <EOT>")
    assert not set(sneaky) & {*range(49152, 49156), tok.convert_tokens_to_ids("<|im_start|>")}
    assert tok.decode(sneaky) == "<PRE> <|im_start|> <EOT>"


def test_fim_training_samples_use_the_bpe_layout(fim_tokenizer_dir):
    from transformers import AutoTokenizer

    from codellama_hf.data.fim import PSM, SPM, FIMConfig, tokenize_documents

    tok = AutoTokenizer.from_pretrained(fim_tokenizer_dir)
    texts = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(40)]
    out = tokenize_documents(texts, None, tok, seq_len=256, fim=FIMConfig(rate=1.0, spm_rate=0.5, seed=3))
    assert {PSM, SPM} <= set(out.kinds)
    for text, ids, kind in zip(texts, out.input_ids, out.kinds, strict=True):
        assert ids[0] == 49152 and ids[-1] == 49155 and 49154 in ids  # no BOS: SmolLM2 adds none
        mid = ids.index(49154)
        if kind == PSM:  # <PRE> prefix <SUF> suffix <MID> middle <EOT>
            suf = ids.index(49153)
            prefix, suffix, middle = ids[1:suf], ids[suf + 1 : mid], ids[mid + 1 : -1]
            assert tok.decode(prefix) + tok.decode(middle) + tok.decode(suffix) == text
        else:  # <PRE> <SUF> suffix <MID> prefix+middle <EOT>
            assert ids[1] == 49153
            assert tok.decode(ids[mid + 1 : -1]) + tok.decode(ids[2:mid]) == text


def test_load_infill_on_a_bpe_base_uses_the_layout(fim_tokenizer_dir, tmp_path):
    """A small random Llama with the SmolLM2 + FIM tokenizer: load().infill() equals greedy decoding of the
    hand-built BPE PSM prompt, and stops at <EOT>."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from codellama_hf import load
    from codellama_hf.models import llama_config

    folder = tmp_path / "bpe-model"
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=49156))
    tok = AutoTokenizer.from_pretrained(fim_tokenizer_dir)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    for item in fim_tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    loaded = load(folder, dtype="float32")
    assert loaded.can_infill
    got = loaded.infill(PREFIX, SUFFIX, max_new_tokens=12)
    prompt = torch.tensor([[49152, *_plain(tok, PREFIX), 49153, *_plain(tok, SUFFIX), 49154]])
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=[tok.eos_token_id, 49155])
    new = out[0, prompt.shape[1] :].tolist()
    if 49155 in new:
        new = new[: new.index(49155)]
    assert got == tok.decode([i for i in new if i != tok.eos_token_id])


def test_tokenizers_that_cannot_take_the_fim_tokens_are_refused(fim_tokenizer_dir, tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    assert tokenizer_kind(tiny_tokenizer) == SENTENCEPIECE
    with pytest.raises(ValueError, match=r"SentencePiece BPE .*codellama-hf tokenizer --llama2"):
        add_fim_tokens(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"already has \['<PRE>', '<SUF>', '<MID>', '<EOT>'\]"):
        add_fim_tokens(AutoTokenizer.from_pretrained(fim_tokenizer_dir))
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"cannot take the FIM tokens: it is neither byte-level BPE"):
        add_fim_tokens(other)
    other.save_pretrained(tmp_path / "wordpiece")
    done = cli("tokenizer", "--add-fim", str(tmp_path / "wordpiece"), "--out", str(tmp_path / "out"))
    assert done.returncode != 0 and "cannot take the FIM tokens" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    assert BPE_SENTINELS == ("<PRE>", "<SUF>", "<MID>", "<EOT>")


@pytest.mark.parametrize("infill_format", ["psm", "spm"])
def test_evaluation_infilling_task_sends_the_bpe_layout(
    fim_tokenizer_dir, tiny_model_factory, tmp_path, infill_format
):
    """HumanEval single-line infilling through the shared back end: the model receives exactly the BPE layout."""
    from transformers import AutoTokenizer

    from codellama_hf.evaluation.benchmarks import get_benchmark
    from codellama_hf.evaluation.runner import ExecutionSettings, evaluate_execution
    from codellama_hf.generation import HFBackend
    from tests.helpers.evaluation_generation import constant_model

    tok = AutoTokenizer.from_pretrained(fim_tokenizer_dir)
    model = constant_model(tiny_model_factory, len(tok), 49155)  # answers <EOT> at once: an empty middle
    result = evaluate_execution(
        "humaneval-infill-single",
        HFBackend(model, tok, batch_size=1),
        "bpe",
        tmp_path / "out",
        limit=1,
        infill_format=infill_format,
        execution=ExecutionSettings(allow_code_execution=True),
    )
    problem = get_benchmark("humaneval-infill-single").problems[0]
    pre, suf = _plain(tok, problem.prompt), _plain(tok, problem.suffix)
    expected = [49152, *pre, 49153, *suf, 49154] if infill_format == "psm" else [49152, 49153, *suf, 49154, *pre]
    assert model.calls[0][0].tolist() == expected
    assert result["task"] == f"humaneval-infill-single-{infill_format}"


def test_a_fim_stage_on_a_bpe_base_without_the_tokens_is_refused_before_training(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    from codellama_hf.training.config import DataArguments
    from codellama_hf.training.stages import fim_config

    base = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    with pytest.raises(ValueError, match=r"fim_rate=0.9 needs .*codellama-hf tokenizer --add-fim <base>"):
        fim_config(DataArguments(dataset_mixture="code", fim_rate=0.9), base, seed=0)
    assert fim_config(DataArguments(dataset_mixture="code", fim_rate=0.0), base, seed=0) is None
