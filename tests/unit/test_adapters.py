"""LoRA / QLoRA (codellama_hf.adapters): options, a QLoRA step on CPU, merge-and-save, the base check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from codellama_hf.adapters import (
    METADATA_FILE,
    AdapterArguments,
    adapter_size,
    apply_adapters,
    load_adapter,
    merge_and_save,
    model_loading_kwargs,
    save_adapter,
)


def _batch():
    return torch.randint(3, 4016, (2, 24), generator=torch.Generator().manual_seed(0))


def _train(model, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=_batch(), labels=_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def _lora_deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """base weight name -> (alpha / r) * B @ A, computed from the saved adapter files."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = _tensors(adapter_dir)
    deltas = {}
    for name, a in tensors.items():
        if name.endswith("lora_A.weight"):
            b = tensors[name.replace("lora_A", "lora_B")]
            target = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            deltas[target] = scale * (b.double() @ a.double())
    return deltas


def test_options_validate_and_map_to_peft_and_bitsandbytes():
    options = AdapterArguments(use_peft=True, lora_r=8, lora_alpha=16, load_in_4bit=True)
    lora = options.lora_config()
    assert (lora.r, lora.lora_alpha, lora.target_modules, lora.bias) == (8, 16, "all-linear", "none")
    bnb = options.quantization_config("float32")
    assert (bnb.load_in_4bit, bnb.bnb_4bit_quant_type, bnb.bnb_4bit_compute_dtype, bnb.bnb_4bit_use_double_quant) == (
        True,
        "nf4",
        torch.float32,
        True,
    )
    assert AdapterArguments(use_peft=True, load_in_8bit=True).quantization_config().load_in_8bit
    assert AdapterArguments().lora_config() is None and AdapterArguments().quantization_config() is None
    for kwargs, message in [
        ({"load_in_4bit": True, "load_in_8bit": True, "use_peft": True}, "exclusive"),
        ({"load_in_4bit": True}, "need use_peft"),
        ({"use_peft": True, "bnb_4bit_quant_type": "int3"}, "bnb_4bit_quant_type='int3'"),
        ({"lora_r": 0}, "lora_r=0"),
        ({"lora_dropout": 1.5}, "lora_dropout=1.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            AdapterArguments(**kwargs)


def test_options_are_fields_of_every_stage_recipe(tmp_path):
    """Stage recipes read the adapter options (TRL's names) from the same YAML / command line as everything else."""
    from codellama_hf.training.config import ModelArguments, parse_stage_config

    assert issubclass(ModelArguments, AdapterArguments)
    config = tmp_path / "python.yaml"
    config.write_text(
        f"stage: python\noutput_dir: {tmp_path / 'out'}\nmax_steps: 1\ndataset_sources: [{tmp_path}]\n"
        "seq_len: 64\ntokens_per_step: 64\nper_device_train_batch_size: 1\nreport_to: none\n"
        "use_peft: true\nlora_r: 8\n"
    )
    model_args, *_ = parse_stage_config(
        "python", ["--config", str(config), "--load_in_4bit", "true", "--lora_target_modules", "q_proj", "v_proj"]
    )
    assert (model_args.use_peft, model_args.lora_r, model_args.quantized, model_args.lora_target_modules) == (
        True,
        8,
        "4bit",
        ["q_proj", "v_proj"],
    )
    with pytest.raises(ValueError, match="need use_peft"):
        parse_stage_config("python", ["--config", str(config), "--use_peft", "false", "--load_in_4bit", "true"])


def test_qlora_step_on_cpu_then_merge_equals_base_plus_delta(base_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    options = AdapterArguments(use_peft=True, load_in_4bit=True, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    model = AutoModelForCausalLM.from_pretrained(
        base_dirs[0], dtype=torch.float32, **model_loading_kwargs(options, torch.float32)
    )
    peft_model = apply_adapters(model, options)
    up = peft_model.base_model.model.model.layers[0].mlp.up_proj
    assert type(up.base_layer).__name__ == "Linear4bit" and up.base_layer.weight.dtype == torch.uint8
    frozen = up.base_layer.weight.data.clone()
    lora_b = up.lora_B["default"].weight.detach().clone()
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    losses = _train(peft_model, steps=3)
    assert losses[-1] < losses[0]
    assert torch.equal(up.base_layer.weight.data, frozen)  # the 4-bit base stays frozen
    assert not torch.equal(up.lora_B["default"].weight, lora_b)  # the adapters learn

    adapter_dir = save_adapter(peft_model, tmp_path / "adapter", AutoTokenizer.from_pretrained(base_dirs[0]))
    metadata = json.loads((adapter_dir / METADATA_FILE).read_text())
    assert metadata["quantization"] == "4bit" and metadata["base_model"] == str(base_dirs[0])
    merged_dir = merge_and_save(adapter_dir, tmp_path / "merged")

    base, merged = _tensors(base_dirs[0]), _tensors(merged_dir)
    deltas = _lora_deltas(adapter_dir)
    assert len(deltas) == 4 * 7  # every linear layer of every block
    assert set(merged) == set(base)
    for name, weight in merged.items():
        expected = base[name].double() + deltas.get(name, 0)  # full-precision base, not the 4-bit one
        torch.testing.assert_close(weight.double(), expected, rtol=0, atol=1e-6)
    reloaded = LlamaForCausalLM.from_pretrained(merged_dir)  # a plain folder
    assert json.loads((merged_dir / "config.json").read_text())["rope_theta"] == 10_000.0
    assert len(AutoTokenizer.from_pretrained(merged_dir)) == reloaded.get_input_embeddings().num_embeddings


def test_lora_merge_keeps_the_trained_theta_and_matches_the_adapter(base_dirs, tmp_path):
    """An LCFT-style stage: theta 1e6 and longer context set on the config, LoRA trained, then merged."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from codellama_hf.models import effective_rope_theta, set_rope_theta

    config = AutoConfig.from_pretrained(base_dirs[0])
    set_rope_theta(config, 1e6, max_position_embeddings=8192)
    model = AutoModelForCausalLM.from_pretrained(base_dirs[0], config=config)
    peft_model = apply_adapters(
        model, AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    )
    _train(peft_model, steps=2)
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    (adapter_dir / "lineage.json").write_text(json.dumps({"format": 1, "stage": "lcft", "base_model": {}}))
    # (a stage writes its real lineage there; the card then names the LoRA settings from merge_and_save's entry)
    merged_dir = merge_and_save(adapter_dir, tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert effective_rope_theta(merged) == pytest.approx(1e6) and merged.config.max_position_embeddings == 8192
    saved = json.loads((merged_dir / "config.json").read_text())
    assert saved["rope_theta"] == saved["rope_parameters"]["rope_theta"] == 1e6
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(_batch()).logits, peft_model(input_ids=_batch()).logits, atol=1e-4, rtol=0)
    lineage = json.loads((merged_dir / "lineage.json").read_text())
    assert lineage["adapter"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts

    card = render_card(read_facts(merged_dir), [], CardOptions())
    assert "| lcft | `?` | LoRA r=4, alpha 32 |" in card.text and "| RoPE theta | 1,000,000 |" in card.text
    with pytest.raises(FileExistsError, match="already exists"):
        merge_and_save(adapter_dir, merged_dir)


def test_an_adapter_refuses_another_base(base_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from codellama_hf.models import llama_config

    model = AutoModelForCausalLM.from_pretrained(base_dirs[0])
    peft_model = apply_adapters(model, AdapterArguments(use_peft=True, lora_r=4))
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"trained on another base model .*base0.*differ"):
        merge_and_save(adapter_dir, tmp_path / "merged", base_model=base_dirs[1])
    assert not (tmp_path / "merged").exists()
    # The same base in another dtype is still its base.
    bf16 = AutoModelForCausalLM.from_pretrained(base_dirs[0], dtype=torch.bfloat16)
    assert load_adapter(bf16, adapter_dir).peft_config["default"].r == 4
    # An adapter without our metadata (trained elsewhere) on a model of other shapes: PEFT's error, explained.
    (adapter_dir / METADATA_FILE).unlink()
    other = LlamaForCausalLM(llama_config("tiny", vocab_size=4016, hidden_size=64, intermediate_size=384))
    with pytest.raises(ValueError, match="does not fit .*other shapes"):
        load_adapter(other, adapter_dir)
    with pytest.raises(ValueError, match="initialised at random"):
        apply_adapters(other, AdapterArguments(use_peft=True))


def _grown(folder, rows: int = 4032):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(rows, mean_resizing=True)  # as the stage does before wrapping (training/model.py)
    return model


def _check_merged(merged_dir: Path, base_dir: Path, peft_model, new: slice, *, tied: bool) -> None:
    """Old rows and every other weight are the base's (plus LoRA deltas), new rows the trained ones, same logits."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = _tensors(base_dir)
    embed = peft_model.base_model.model.model.embed_tokens.token_adapter
    trained = embed.trainable_tokens_delta["default"].detach()
    assert torch.equal(merged.model.embed_tokens.weight[new], trained)
    assert torch.equal(merged.model.embed_tokens.weight[: new.start], base["model.embed_tokens.weight"])
    if tied:
        assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    else:
        head = peft_model.base_model.model.lm_head.token_adapter.trainable_tokens_delta["default"].detach()
        assert torch.equal(merged.lm_head.weight[new], head)
        assert torch.equal(merged.lm_head.weight[: new.start], base["lm_head.weight"])
    tokens = torch.tensor([[1, new.start, new.stop - 1, 77, new.start + 3, 5]])  # new rows included
    with torch.no_grad():
        torch.testing.assert_close(
            merged(tokens).logits, peft_model.eval()(input_ids=tokens).logits, atol=1e-5, rtol=0
        )


def test_a_grown_vocabulary_trains_and_saves_only_the_new_rows(base_dirs, tmp_path):
    """Llama 2 -> Code Llama adds infilling rows: peft trainable tokens train them, the adapter holds only them,
    and the merged model equals the adapted one (untied embeddings: embed_tokens and lm_head rows)."""
    from safetensors import safe_open

    model = _grown(base_dirs[0])
    initial = model.get_input_embeddings().weight[4016:].detach().clone()  # mean-initialised rows
    head_initial = model.get_output_embeddings().weight[4016:].detach().clone()
    peft_model = apply_adapters(model, AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0))
    extra = {n: p.shape for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert sorted(extra.values()) == [(16, 128), (16, 128)] and all("trainable_tokens" in n for n in extra)
    adapter = peft_model.base_model.model.model.embed_tokens.token_adapter
    assert torch.equal(adapter.trainable_tokens_delta["default"].detach(), initial)  # starts at the stage's init
    assert torch.equal(
        peft_model.base_model.model.lm_head.token_adapter.trainable_tokens_delta["default"].detach(), head_initial
    )
    _train(peft_model, steps=2)
    assert not torch.equal(adapter.trainable_tokens_delta["default"].detach(), initial)  # the new rows learn
    assert torch.equal(  # the old rows stay the base's
        adapter.base_layer.weight[:4016],
        _tensors(base_dirs[0])["model.embed_tokens.weight"],
    )

    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as saved:
        rows = {k: tuple(saved.get_slice(k).get_shape()) for k in saved.keys() if "lora_" not in k}
    assert rows == {
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": (16, 128),
        "base_model.model.lm_head.token_adapter.trainable_tokens_delta": (16, 128),
    }
    metadata = json.loads((adapter_dir / METADATA_FILE).read_text())
    assert metadata["lora"]["trained_rows"] == {"embed_tokens": [4016, 4031], "lm_head": [4016, 4031]}
    assert metadata["lora"]["modules_to_save"] == [] and metadata["base_config"]["vocab_size"] == 4032

    # The same stage with whole matrices, as before: the adapter file carries 2 x 4032 x 128 fp32 values more.
    whole = apply_adapters(
        _grown(base_dirs[0]),
        AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0, lora_modules_to_save=["embed_tokens", "lm_head"]),
    )
    whole_dir = save_adapter(whole, tmp_path / "whole")
    with safe_open(str(whole_dir / "adapter_model.safetensors"), "pt") as saved:
        matrices = sorted(k for k in saved.keys() if "lora_" not in k)
    assert matrices == [  # the trained copies only, not peft's "auto" extra original + base weight of each
        "base_model.model.lm_head.weight",
        "base_model.model.model.embed_tokens.weight",
    ]
    small, big = adapter_size(adapter_dir), adapter_size(whole_dir)
    assert big - small > 2 * (4032 - 16) * 128 * 4 and small < big / 3

    (adapter_dir / "lineage.json").write_text(json.dumps({"format": 1, "stage": "code", "base_model": {}}))
    merged_dir = merge_and_save(adapter_dir, tmp_path / "merged")
    _check_merged(merged_dir, base_dirs[0], peft_model, slice(4016, 4032), tied=False)
    lineage = json.loads((merged_dir / "lineage.json").read_text())
    assert lineage["adapter"]["size_bytes"] == small == (adapter_dir / "adapter_model.safetensors").stat().st_size
    assert lineage["adapter"]["lora"]["trained_rows"]["lm_head"] == [4016, 4031]
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts

    card = render_card(read_facts(merged_dir), [], CardOptions()).text
    row = next(line for line in card.splitlines() if line.startswith("| code | LoRA"))
    assert f"| rows 4,016-4,031 (16 new) of embed_tokens, lm_head | {small:,} bytes (" in row
    assert "adapter size on disk" in card


def test_tied_embeddings_train_one_copy_of_the_new_rows(tied_base_dir, tmp_path):
    """SmolLM2-style tied input/output embeddings: one trained copy of the rows, the output layer follows it."""
    peft_model = apply_adapters(
        _grown(tied_base_dir, 4020), AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0)
    )
    extra = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert extra == ["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"]
    _train(peft_model, steps=2)
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    assert json.loads((adapter_dir / METADATA_FILE).read_text())["lora"]["trained_rows"] == {
        "embed_tokens": [4016, 4019]
    }
    _check_merged(
        merge_and_save(adapter_dir, tmp_path / "merged"), tied_base_dir, peft_model, slice(4016, 4020), tied=True
    )


def test_whole_matrices_stay_an_explicit_option_and_half_of_them_is_refused(base_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _grown(base_dirs[0])
    with pytest.raises(
        ValueError, match=r"grew from 4016 to 4032 rows .*\['embed_tokens'\] in full but not \['lm_head'\]"
    ):
        apply_adapters(model, AdapterArguments(use_peft=True, lora_modules_to_save=["embed_tokens"]))
    options = AdapterArguments(
        use_peft=True, lora_r=4, lora_dropout=0.0, lora_modules_to_save=["embed_tokens", "lm_head"]
    )
    peft_model = apply_adapters(model, options)
    assert peft_model.peft_config["default"].trainable_token_indices is None
    _train(peft_model, steps=1)
    merged = AutoModelForCausalLM.from_pretrained(
        merge_and_save(save_adapter(peft_model, tmp_path / "a"), tmp_path / "merged")
    ).eval()
    tokens = torch.tensor([[1, 4020, 4031, 77]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(tokens).logits, peft_model.eval()(input_ids=tokens).logits, atol=1e-5, rtol=0
        )


def test_qlora_on_a_grown_vocabulary_trains_the_new_rows_beside_the_4bit_base(base_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    options = AdapterArguments(use_peft=True, load_in_4bit=True, lora_r=4, lora_dropout=0.0)
    model = AutoModelForCausalLM.from_pretrained(
        base_dirs[0], dtype=torch.float32, **model_loading_kwargs(options, torch.float32)
    )
    model.resize_token_embeddings(4032, mean_resizing=True)
    peft_model = apply_adapters(model, options)
    assert type(peft_model.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    head = peft_model.base_model.model.lm_head.token_adapter.trainable_tokens_delta["default"]
    before = head.detach().clone()
    losses = _train(peft_model, steps=3)
    assert losses[-1] < losses[0] and not torch.equal(head.detach(), before)
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(merge_and_save(adapter_dir, tmp_path / "merged"))
    assert torch.equal(merged.lm_head.weight[4016:], head.detach())  # merged at full precision, rows exact


def test_new_rows_under_zero3_without_cuda_get_a_clear_error(base_dirs):
    """peft gathers trainable rows under ZeRO-3 with a CUDA broadcast: on CPU the stage says what to do instead."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    model = _grown(base_dirs[0])
    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        with pytest.raises(ValueError, match=r"under DeepSpeed ZeRO-3 needs CUDA.*lora_modules_to_save"):
            apply_adapters(model, AdapterArguments(use_peft=True, lora_r=4))
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        del keep
        unset_hf_deepspeed_config()
    assert not is_deepspeed_zero3_enabled()


def test_a_bpe_base_gaining_the_fim_tokens_saves_four_rows_and_merges(tmp_path):
    """SmolLM2's tokenizer + `--add-fim` (49,152 -> 49,156) on a tiny tied-embedding model: the adapter holds the
    4 new rows once, and the merged folder is completed from tokenizer.json (no tokenizer.model on a BPE base)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from codellama_hf.assets import smollm2_dir
    from codellama_hf.models import llama_config
    from codellama_hf.tokenizer.bpe import add_fim_tokens_to_folder

    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    config = llama_config("tiny", vocab_size=49152, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(smollm2_dir()).save_pretrained(base_dir)
    fim_dir, ids = add_fim_tokens_to_folder(base_dir, tmp_path / "fim-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(fim_dir)

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    peft_model = apply_adapters(model, AdapterArguments(use_peft=True, lora_r=4, lora_dropout=0.0))
    _train(peft_model, steps=1)
    adapter_dir = save_adapter(peft_model, tmp_path / "adapter", tokenizer)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as saved:
        rows = {k: saved.get_slice(k).get_shape() for k in saved.keys() if "lora_" not in k}
    assert rows == {"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": [4, 128]}
    metadata = json.loads((adapter_dir / METADATA_FILE).read_text())["lora"]
    assert metadata["trained_rows"] == {"embed_tokens": [49152, 49155]} and metadata["tied_embeddings"] is True

    merged_dir = merge_and_save(adapter_dir, tmp_path / "merged")
    _check_merged(merged_dir, base_dir, peft_model, slice(ids[0], ids[-1] + 1), tied=True)
    assert AutoTokenizer.from_pretrained(merged_dir).convert_tokens_to_ids("<MID>") == 49154
    generation = json.loads((merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 49155]
