"""`from codellama_hf import load`: local and Meta folders, quantization, infilling, chat, adapters, bad input.

Hub ids through the HF cache (online and with HF_HUB_OFFLINE=1) are tested in test_hub.py against a loopback Hub.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from codellama_hf.family import FAMILY, Variant, parse_slot, variant_from_name
from codellama_hf.load import resolve
from tests.helpers import ROOT
from tests.helpers.golden import GOLDEN_PREFIX, GOLDEN_PSM, GOLDEN_SUFFIX

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def _model_folder(folder, model, tokenizer_dir):
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
    return folder


class Script:
    """Forces the model's next token at each generation step (a forward hook on the logits) and records the
    input ids of the first forward pass: the prompt the generation layer built."""

    def __init__(self, model, tokens: list[int]):
        self.tokens, self.step, self.prompts = tokens, 0, []
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if self.step == 0:
            self.prompts.append(ids[0].tolist())
        forced = self.tokens[min(self.step, len(self.tokens) - 1)]
        output.logits[:, -1, :] = -1e9
        output.logits[:, -1, forced] = 0.0
        self.step += 1
        return output

    def reset(self, tokens):
        self.tokens, self.step = tokens, 0


@pytest.fixture(scope="module")
def codellama_dir(tmp_path_factory, codellama_tokenizer_dir):
    """A tiny model with Code Llama's real 32016-piece tokenizer (and its chat template) in one folder."""
    from transformers import LlamaForCausalLM

    from codellama_hf.chat import CHAT_TEMPLATE
    from codellama_hf.models import llama_config
    from codellama_hf.tokenizer import load_sp_model, save_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cl") / "CodeLlama-tiny-Instruct"
    tokenizer = save_tokenizer(
        load_sp_model(codellama_tokenizer_dir / "tokenizer.model"), folder.parent / "tok", chat_template=CHAT_TEMPLATE
    )
    return _model_folder(folder, LlamaForCausalLM(llama_config("tiny", vocab_size=32016)), tokenizer)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=4016, intermediate_size=384))
    return _model_folder(tmp_path_factory.mktemp("tiny") / "model", model, tiny_tokenizer_dir)


def test_import_is_cheap_and_load_is_the_function():
    code = "import sys, codellama_hf as c; print('torch' in sys.modules, callable(c.load), c.load.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "load"]


def test_family_names_and_who_can_infill():
    assert len(FAMILY) == 9
    infill = {v.name for v in FAMILY if v.infilling}
    assert infill == {"CodeLlama-7b", "CodeLlama-13b", "CodeLlama-7b-Instruct", "CodeLlama-13b-Instruct"}
    assert {v.vocab_size for v in FAMILY if v.infilling} == {32016}
    assert {v.vocab_size for v in FAMILY if not v.infilling} == {32000}
    python = variant_from_name("codellama/CodeLlama-34b-Python-hf")
    assert (python, python.hub_id, python.title) == (
        Variant("34b", "python"),
        "codellama/CodeLlama-34b-Python-hf",
        "Code Llama - Python 34B",
    )
    assert parse_slot("13b-instruct").name == "CodeLlama-13b-Instruct" and variant_from_name("Llama-2-7b") is None
    with pytest.raises(ValueError, match="'70b-python': unknown Code Llama size '70b'"):
        parse_slot("70b-python")


def test_infill_builds_meta_prompt_and_returns_only_the_middle(codellama_dir):
    from codellama_hf import load
    from codellama_hf.tokenizer import encode_infilling, infill_ids

    model = load(codellama_dir)
    ids = infill_ids(model.tokenizer)
    middle = "Remove non-ASCII characters."
    script = Script(model.model, [*encode_infilling(model.tokenizer, middle), ids.eot, 500, 600])
    assert model.infill(GOLDEN_PREFIX, GOLDEN_SUFFIX) == middle
    assert script.prompts[-1] == GOLDEN_PSM
    script.reset([*encode_infilling(model.tokenizer, "x = 1"), ids.eot])
    assert model.infill(GOLDEN_PREFIX, GOLDEN_SUFFIX, suffix_first=True) == "x = 1"
    psm_prefix = GOLDEN_PSM[2 : GOLDEN_PSM.index(32008)]
    psm_suffix = GOLDEN_PSM[GOLDEN_PSM.index(32008) + 1 : -1]
    assert script.prompts[-1] == [1, 32007, 32008, *psm_suffix, 32009, *psm_prefix]  # Meta's SPM layout
    script.handle.remove()


def test_chat_uses_the_tokenizer_template_and_meta_encoding(codellama_dir):
    from codellama_hf import load
    from codellama_hf.chat import prompt_ids
    from codellama_hf.tokenizer import encode

    model = load(codellama_dir)
    assert model.can_chat and model.variant == Variant("tiny", "instruct")
    dialog = [
        {"role": "system", "content": "Answer in Python."},
        {"role": "user", "content": "Reverse a list?"},
        {"role": "assistant", "content": "Use reversed()."},
        {"role": "user", "content": "And a string?"},
    ]
    script = Script(model.model, [*encode(model.tokenizer, "Use s[::-1]."), model.tokenizer.eos_token_id, 700])
    assert model.chat(dialog) == "Use s[::-1]."
    assert script.prompts[-1] == prompt_ids(model.tokenizer, dialog)  # Meta's chat_completion tokens
    script.handle.remove()


def test_generate_is_the_generation_layer(tiny_dir):
    from codellama_hf import load
    from codellama_hf.generation import generate

    model = load(tiny_dir)
    assert not model.can_chat and model.can_infill
    expected = generate(model.model, model.tokenizer, ["def f(x):", "import os"], max_new_tokens=4)
    assert model.generate(["def f(x):", "import os"], max_new_tokens=4) == [e[0] for e in expected]
    assert model.generate("def f(x):", max_new_tokens=4) == expected[0][0]
    with pytest.raises(ValueError, match="has no chat template: only Code Llama - Instruct models chat"):
        model.chat([{"role": "user", "content": "hi"}])


def test_models_without_infilling_refuse_clearly(tmp_path, tiny_dir):
    from transformers import LlamaForCausalLM

    from codellama_hf import load
    from codellama_hf.models import llama_config
    from codellama_hf.tokenizer import build_tiny_tokenizer

    python = tmp_path / "CodeLlama-tiny-Python"
    shutil.copytree(tiny_dir, python)
    with pytest.raises(ValueError, match="CodeLlama-tiny-Python .* cannot infill: .* without fill-in-the-middle"):
        load(python).infill("def f(x):\n    ", "\n    return y\n")
    tokenizer = build_tiny_tokenizer(tmp_path / "tok32000", infilling=False)
    plain = _model_folder(tmp_path / "plain", LlamaForCausalLM(llama_config("tiny", vocab_size=4000)), tokenizer)
    with pytest.raises(ValueError, match="plain cannot infill: .*lack Code Llama's infilling pieces"):
        load(plain).infill("a", "b")


def test_4bit_and_8bit_on_cpu(tiny_dir, tmp_path):
    from transformers import LlamaForCausalLM

    from codellama_hf import load
    from codellama_hf.models import llama_config

    packed_kernel = False
    for quantization, layer in (("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")):
        model = load(tiny_dir, quantization=quantization)
        up = model.model.model.layers[0].mlp.up_proj
        assert type(up).__name__ == layer and model.quantization == quantization
        assert isinstance(model.generate("import os", max_new_tokens=2), str)
        packed_kernel |= getattr(up, "support_avx512bf16_for_cpu", False)
    # An FFN size that is not a multiple of 32 (344) is fine for bitsandbytes' generic CPU path, and refused up
    # front where its packed AVX512-BF16 kernel would assert in the middle of a forward pass.
    odd_model = LlamaForCausalLM(llama_config("tiny", vocab_size=4016, intermediate_size=344))
    odd = _model_folder(tmp_path / "odd", odd_model, tiny_dir)
    if packed_kernel:
        with pytest.raises(ValueError, match="cannot run 4-bit on this CPU: .*divisible by 32"):
            load(odd, quantization="4bit")
    else:
        assert isinstance(load(odd, quantization="4bit").generate("import os", max_new_tokens=2), str)
    with pytest.raises(ValueError, match="quantization='3bit'"):
        load(tiny_dir, quantization="3bit")


def test_meta_folder_is_converted_once(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import codellama_hf.convert
    from codellama_hf import load
    from codellama_hf.convert import hf_to_meta

    meta = hf_to_meta(tiny_dir, tmp_path / "CodeLlama-tiny", progress=False)
    monkeypatch.setenv("CODELLAMA_HF_CACHE", str(tmp_path / "cache"))
    loaded = load(meta)
    tokens = torch.tensor([[1, 400, 500, 600]])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tiny_dir)(tokens).logits
        torch.testing.assert_close(loaded.model(tokens).logits, expected, atol=1e-5, rtol=0)
    [converted] = (tmp_path / "cache" / "converted").iterdir()
    assert converted.name.startswith("CodeLlama-tiny-") and loaded.variant == Variant("tiny", "base")

    def refuse(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(codellama_hf.convert, "meta_to_hf", refuse)
    assert load(meta).source == str(meta)


def test_adapter_is_loaded_on_its_base_only(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from codellama_hf import load
    from codellama_hf.adapters import AdapterArguments, apply_adapters, save_adapter
    from codellama_hf.models import llama_config

    peft_model = apply_adapters(
        AutoModelForCausalLM.from_pretrained(tiny_dir), AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0)
    )
    for module in peft_model.modules():  # a non-zero update, as after training
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.02)
    adapter = save_adapter(peft_model, tmp_path / "adapter")
    model = load(tiny_dir, adapter=adapter)
    tokens = torch.tensor([[1, 400, 500]])
    with torch.no_grad():
        torch.testing.assert_close(model.model(tokens).logits, peft_model.eval()(input_ids=tokens).logits)
    assert "adapter=" in repr(model)
    torch.manual_seed(5)
    other = _model_folder(
        tmp_path / "other", LlamaForCausalLM(llama_config("tiny", vocab_size=4016, intermediate_size=384)), tiny_dir
    )
    with pytest.raises(ValueError, match="was trained on another base model"):
        load(other, adapter=adapter)
    with pytest.raises(ValueError, match="is a PEFT adapter, not a model"):
        load(adapter)


def test_bad_names_and_revisions(tiny_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from codellama_hf import load

    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        load(tmp_path / "missing" / "model")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load(tmp_path)
    with pytest.raises(ValueError, match="revision='v2' applies to Hub models"):
        load(tiny_dir, revision="v2")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="codellama/CodeLlama-7b-hf is not in the HF cache .*HF_HUB_OFFLINE=1"):
        resolve("CodeLlama-7b")  # a family name -> Meta's repository
