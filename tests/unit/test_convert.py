"""Checkpoint conversion, proven against Meta's own math.

Meta-format checkpoints are built here shard by shard with random weights, exactly as fairscale model parallelism
lays them out, and `meta_forward` below runs Meta's llama/model.py forward pass on those shards the model-parallel
way (each shard computes its heads / FFN columns / vocabulary slice; row-parallel outputs are summed, column-parallel
ones gathered), with Meta's complex-number rotary embedding. It never merges shards, so it checks the converter's
merge dimensions and rotary permutation independently.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from codellama_hf.convert import hf_to_meta, meta_to_hf
from codellama_hf.models import effective_rope_theta, write_config_with_both_rope_keys
from codellama_hf.tokenizer import infilling_prompt, load_sp_model, save_tokenizer
from tests.helpers.convert import make_meta_checkpoint, meta_ffn_dim, no_leftovers
from tests.helpers.golden import GOLDEN_PREFIX, GOLDEN_PSM, GOLDEN_SUFFIX


def load_meta_shards(folder: Path) -> tuple[dict, list[dict]]:
    params = json.loads((folder / "params.json").read_text())
    paths = sorted(folder.glob("consolidated.*.pth"))
    return params, [torch.load(p, map_location="cpu", weights_only=True) for p in paths]


def precompute_freqs_cis(dim: int, end: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, dtype=torch.float32)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def rms_norm(x, weight, eps):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def repeat_kv(x, n_rep):
    bs, slen, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return (
        x[:, :, :, None, :]
        .expand(bs, slen, n_kv_heads, n_rep, head_dim)
        .reshape(bs, slen, n_kv_heads * n_rep, head_dim)
    )


@torch.no_grad()
def meta_forward(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Meta's Transformer.forward(tokens, start_pos=0), model-parallel over the shards as fairscale runs it."""
    params, shards = load_meta_shards(folder)
    n = len(shards)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim, eps = dim // n_heads, params.get("norm_eps", 1e-5)
    local_heads, local_kv = n_heads // n, n_kv // n
    bsz, seqlen = tokens.shape
    freqs_cis = precompute_freqs_cis(head_dim, seqlen * 2, params.get("rope_theta", 10000.0))[:seqlen]
    mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)

    h = torch.cat([torch.nn.functional.embedding(tokens, sd["tok_embeddings.weight"]) for sd in shards], dim=-1)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rms_norm(h, shards[0][p + "attention_norm.weight"], eps)
        attn = 0
        for sd in shards:  # each rank: its heads, then its slice of wo; the results are all-reduced (summed)
            xq = (x @ sd[p + "attention.wq.weight"].T).view(bsz, seqlen, local_heads, head_dim)
            xk = (x @ sd[p + "attention.wk.weight"].T).view(bsz, seqlen, local_kv, head_dim)
            xv = (x @ sd[p + "attention.wv.weight"].T).view(bsz, seqlen, local_kv, head_dim)
            xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
            keys, values = repeat_kv(xk, local_heads // local_kv), repeat_kv(xv, local_heads // local_kv)
            xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
            scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(head_dim) + mask
            scores = torch.softmax(scores.float(), dim=-1).type_as(xq)
            out = torch.matmul(scores, values).transpose(1, 2).contiguous().view(bsz, seqlen, -1)
            attn = attn + out @ sd[p + "attention.wo.weight"].T
        h = h + attn
        x = rms_norm(h, shards[0][p + "ffn_norm.weight"], eps)
        ffn = 0
        for sd in shards:
            gate = torch.nn.functional.silu(x @ sd[p + "feed_forward.w1.weight"].T)
            ffn = ffn + (gate * (x @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T
        h = h + ffn
    h = rms_norm(h, shards[0]["norm.weight"], eps)
    return torch.cat([h @ sd["output.weight"].T for sd in shards], dim=-1).float()


@torch.no_grad()
def hf_forward(folder: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model(tokens).logits.float(), model


def assert_same_shards(a: Path, b: Path) -> None:
    """Same tensors, names, order and dtypes (the unused legacy rope.freqs buffer is not written back)."""
    _, left = load_meta_shards(a)
    _, right = load_meta_shards(b)
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=False):
        x.pop("rope.freqs", None)
        assert list(x) == list(y)
        for key in x:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


# Pairwise cover of shards {1,2,4} x GQA x theta {1e4,1e6} x vocab {32000 (Llama 2), 32016 (Code Llama)}.
CASES = [
    dict(shards=1, n_kv_heads=None, theta=1e4, vocab=32000, rope_freqs=True),
    dict(shards=1, n_kv_heads=2, theta=1e6, vocab=32016, ffn_dim_multiplier=1.3),
    dict(shards=2, n_kv_heads=None, theta=1e6, vocab=32016),
    dict(shards=2, n_kv_heads=2, theta=1e4, vocab=32000, norm_eps=1e-6),
    dict(shards=4, n_kv_heads=4, theta=1e6, vocab=32000, ffn_dim_multiplier=1.3, multiple_of=64),
    dict(shards=4, n_kv_heads=None, theta=1e4, vocab=32016),
]


def _case_id(case: dict) -> str:
    return f"mp{case['shards']}-kv{case['n_kv_heads']}-theta{case['theta']:g}-v{case['vocab']}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_meta_to_hf_matches_meta_forward_and_round_trips(case, tmp_path, llama2_dir, codellama_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = (llama2_dir if case["vocab"] == 32000 else codellama_tokenizer_dir) / "tokenizer.model"
    meta = make_meta_checkpoint(tmp_path / "meta", tokenizer, **case)
    hf = meta_to_hf(meta, tmp_path / "hf", dtype="float32", progress=False)

    tokens = torch.randint(0, case["vocab"], (2, 11), generator=torch.Generator().manual_seed(1))
    logits, model = hf_forward(hf, tokens)
    torch.testing.assert_close(logits, meta_forward(meta, tokens), atol=1e-4, rtol=0)

    config = json.loads((hf / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == case["theta"]
    assert abs(effective_rope_theta(model) - case["theta"]) < 1e-3 * case["theta"]
    assert config["max_position_embeddings"] == (16384 if case["theta"] > 1e4 else 4096)
    assert config["vocab_size"] == case["vocab"] == len(AutoTokenizer.from_pretrained(hf))
    assert config["num_key_value_heads"] == (case["n_kv_heads"] or 8)
    assert (hf / "tokenizer.model").read_bytes() == tokenizer.read_bytes()

    back = hf_to_meta(hf, tmp_path / "meta2", shards=case["shards"], progress=False)
    assert_same_shards(meta, back)
    params, again = json.loads((meta / "params.json").read_text()), json.loads((back / "params.json").read_text())
    expected_ffn = meta_ffn_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    assert meta_ffn_dim(again["dim"], again["multiple_of"], again.get("ffn_dim_multiplier")) == expected_ffn
    assert again.get("rope_theta", 1e4) == case["theta"] and again["norm_eps"] == params["norm_eps"]


def test_default_bfloat16_sharded_output(tmp_path, llama2_dir):
    """Default dtype bf16; several safetensors files with an index, loadable by plain transformers."""
    meta = make_meta_checkpoint(tmp_path / "meta", llama2_dir / "tokenizer.model", vocab=32000, shards=2)
    hf = meta_to_hf(meta, tmp_path / "hf", max_shard_size="4MB", progress=False)
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    files = sorted(hf.glob("model-*.safetensors"))
    assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
    tensors = hf_tensors(hf)
    assert set(index["weight_map"]) == set(tensors) and all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())

    tokens = torch.randint(0, 32000, (1, 9), generator=torch.Generator().manual_seed(2))
    logits, _ = hf_forward(hf, tokens)
    assert (logits - meta_forward(meta, tokens)).abs().max() < 0.02  # bf16 weights: close, not exact


def test_extend_vocab_llama2_to_codellama(tmp_path, llama2_dir, codellama_tokenizer_dir):
    """Llama 2 (32000) -> Code Llama init (32016): Code Llama's tokenizer, mean rows, old logits unchanged."""
    from transformers import AutoTokenizer

    meta = make_meta_checkpoint(tmp_path / "meta", llama2_dir / "tokenizer.model", vocab=32000, shards=2)
    plain = meta_to_hf(meta, tmp_path / "plain", dtype="float32", progress=False)
    extended = meta_to_hf(meta, tmp_path / "extended", dtype="float32", extend_vocab=True, progress=False)

    assert (extended / "tokenizer.json").read_text() == (codellama_tokenizer_dir / "tokenizer.json").read_text()
    tok = AutoTokenizer.from_pretrained(extended)
    assert infilling_prompt(tok, GOLDEN_PREFIX, GOLDEN_SUFFIX) == GOLDEN_PSM

    old, new = hf_tensors(plain), hf_tensors(extended)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[name].shape == (32016, 128) and torch.equal(new[name][:32000], old[name])
        torch.testing.assert_close(new[name][32000:], old[name].mean(0).expand(16, -1), atol=1e-7, rtol=1e-5)
    tokens = torch.randint(0, 32000, (1, 9), generator=torch.Generator().manual_seed(3))
    before, _ = hf_forward(plain, tokens)
    after, _ = hf_forward(extended, tokens)
    torch.testing.assert_close(after[..., :32000], before, atol=1e-5, rtol=0)
    # A new piece's logit is the mean logit, so it starts neither dominant nor negligible.
    torch.testing.assert_close(after[..., 32000:], before.mean(-1, keepdim=True).expand(-1, -1, 16), atol=1e-5, rtol=0)


def test_extend_vocab_refuses_weights_that_already_have_it(tmp_path, codellama_tokenizer_dir):
    meta = make_meta_checkpoint(tmp_path / "meta", codellama_tokenizer_dir / "tokenizer.model", vocab=32016, dim=64)
    with pytest.raises(ValueError, match="already cover .*drop --extend-vocab"):
        meta_to_hf(meta, tmp_path / "hf", extend_vocab=True, progress=False)
    assert no_leftovers(tmp_path / "hf")


@pytest.fixture
def tiny_hf(tmp_path, tiny_model_factory, base_tokenizer_dir) -> tuple[Path, torch.nn.Module]:
    folder = save_tokenizer(load_sp_model(base_tokenizer_dir / "tokenizer.model"), tmp_path / "hf")
    model = tiny_model_factory(4000, theta=1e6)
    with torch.no_grad():  # non-trivial norms, so that norm placement matters
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    write_config_with_both_rope_keys(folder)
    return folder, model


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_to_meta_runs_in_meta_forward_and_round_trips_bit_identical(shards, tmp_path, tiny_hf):
    hf, model = tiny_hf
    meta = hf_to_meta(hf, tmp_path / "meta", shards=shards, progress=False)
    assert sorted(p.name for p in meta.iterdir()) == sorted(
        [f"consolidated.{s:02d}.pth" for s in range(shards)] + ["params.json", "tokenizer.model"]
    )
    params, config = json.loads((meta / "params.json").read_text()), model.config
    ffn = meta_ffn_dim(params["dim"], params.pop("multiple_of"), params.pop("ffn_dim_multiplier", None))
    assert ffn == config.intermediate_size
    assert params == {
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads,
        "vocab_size": 4000,
        "norm_eps": 1e-5,
        "rope_theta": 1e6,
    }

    tokens = torch.randint(0, 4000, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(tokens).logits
    torch.testing.assert_close(meta_forward(meta, tokens), expected, atol=1e-4, rtol=0)

    back = meta_to_hf(meta, tmp_path / "hf2", dtype="auto", progress=False)
    before, after = hf_tensors(hf), hf_tensors(back)
    assert list(before) and set(before) == set(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    a, b = json.loads((hf / "config.json").read_text()), json.loads((back / "config.json").read_text())
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "dtype",
    ):
        assert a[key] == b[key], key
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (hf / name).read_bytes() == (back / name).read_bytes(), name


def test_pth_files_are_what_torch_save_writes(tmp_path, tiny_hf):
    hf, _ = tiny_hf
    meta = hf_to_meta(hf, tmp_path / "meta", shards=2, dtype="bfloat16", progress=False)
    ours = meta / "consolidated.01.pth"
    state = torch.load(ours, weights_only=True, mmap=True)
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    (tmp_path / "ref").mkdir()
    torch.save(state, tmp_path / "ref" / ours.name)
    assert ours.read_bytes() == (tmp_path / "ref" / ours.name).read_bytes()
    assert zipfile.ZipFile(ours).testzip() is None  # CRCs are valid


def test_hf_to_meta_bad_input(tmp_path, tiny_hf, tiny_tokenizer_dir):
    hf, _ = tiny_hf
    out = tmp_path / "meta"
    with pytest.raises(ValueError, match="n_kv_heads=2 cannot be split across 4"):
        hf_to_meta(hf, out, shards=4, progress=False)
    with pytest.raises(ValueError, match="4016 pieces but .*config.json has vocab_size 4000"):
        hf_to_meta(hf, out, tokenizer_model=tiny_tokenizer_dir / "tokenizer.model", progress=False)
    with safe_open(hf / "model.safetensors", framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    from safetensors.torch import save_file

    save_file({**state, "model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}, hf / "model.safetensors")
    with pytest.raises(ValueError, match=r"unknown tensors \['model.layers.0.self_attn.q_proj.bias'\]"):
        hf_to_meta(hf, out, progress=False)
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        hf_to_meta(hf, out, progress=False)
    assert no_leftovers(out)
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        hf_to_meta(hf, out, shards=2, progress=False)


def _last_record_data_offset(path: Path) -> tuple[int, int]:
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
    local_header = path.read_bytes()[info.header_offset : info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", local_header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _missing_shard(m):
    (m / "consolidated.01.pth").unlink()


def _missing_first_shard(m):
    (m / "consolidated.00.pth").unlink()


def _extra_shard(m):
    shutil.copyfile(m / "consolidated.01.pth", m / "consolidated.02.pth")


def _params_disagree(m):
    params = json.loads((m / "params.json").read_text())
    (m / "params.json").write_text(json.dumps({**params, "multiple_of": 256}))


def _truncated(m):
    raw = (m / "consolidated.01.pth").read_bytes()
    (m / "consolidated.01.pth").write_bytes(raw[: len(raw) * 3 // 5])


def _garbage(m):
    (m / "consolidated.01.pth").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)


def _corrupted(m):
    path = m / "consolidated.01.pth"
    offset, size = _last_record_data_offset(path)  # output.weight, written last: fails mid-conversion
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2 : offset + size // 2 + 4] = b"\x00\x01\x02\x03"
    path.write_bytes(bytes(raw))


def _unknown_key(m):
    sd = torch.load(m / "consolidated.00.pth", weights_only=True)
    torch.save({**sd, "layers.0.attention.bias": torch.zeros(32)}, m / "consolidated.00.pth")


def _replicas_differ(m):
    sd = torch.load(m / "consolidated.01.pth", weights_only=True)
    sd["norm.weight"] = sd["norm.weight"] + 1
    torch.save(sd, m / "consolidated.01.pth")


def _tokenizer_size(m, tiny_tokenizer_dir):
    shutil.copyfile(tiny_tokenizer_dir / "tokenizer.model", m / "tokenizer.model")


BAD_META = [
    (_missing_shard, FileNotFoundError, None, r"consolidated\.01\.pth missing"),
    (_missing_first_shard, FileNotFoundError, None, r"consolidated\.00\.pth missing"),
    (_extra_shard, ValueError, None, r"consolidated\.02\.pth onward are extra"),
    (_params_disagree, ValueError, "consolidated.00.pth", r"w1\.weight has shape \(96, 64\).*\(128, 64\)"),
    (_truncated, ValueError, "consolidated.01.pth", "truncated or corrupted"),
    (_garbage, ValueError, "consolidated.01.pth", "truncated or corrupted"),
    (_corrupted, ValueError, "consolidated.01.pth", r"'output\.weight' fails its CRC-32 check"),
    (_unknown_key, ValueError, "consolidated.00.pth", r"unknown tensors \['layers\.0\.attention\.bias'\]"),
    (_replicas_differ, ValueError, "consolidated.01.pth", "replicated tensor norm.weight differs"),
    (_tokenizer_size, ValueError, "tokenizer.model", "4016 pieces but the weights have 4000 .*--extend-vocab"),
]


@pytest.mark.parametrize("mutate, error, names, message", BAD_META, ids=[c[0].__name__.strip("_") for c in BAD_META])
def test_meta_to_hf_bad_input(mutate, error, names, message, small_meta, tmp_path, tiny_tokenizer_dir):
    meta = shutil.copytree(small_meta, tmp_path / "meta")
    mutate(meta, tiny_tokenizer_dir) if mutate is _tokenizer_size else mutate(meta)
    out = tmp_path / "hf"
    with pytest.raises(error, match=message) as raised:
        meta_to_hf(meta, out, progress=False)
    if names:
        assert str(meta / names) in str(raised.value)
    assert no_leftovers(out)


def test_meta_to_hf_refuses_existing_output(small_meta, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        meta_to_hf(small_meta, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    meta_to_hf(small_meta, out, overwrite=True, progress=False)
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


def test_kernel_copy_and_plain_write_give_the_same_files(small_meta, tmp_path, monkeypatch):
    """Unchanged bytes go file to file with os.copy_file_range; where that fails, the mapped bytes are written."""
    fast = meta_to_hf(small_meta, tmp_path / "fast", dtype="float32", progress=False)

    def unsupported(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    slow = meta_to_hf(small_meta, tmp_path / "slow", dtype="float32", progress=False)
    assert (fast / "model.safetensors").read_bytes() == (slow / "model.safetensors").read_bytes()


def test_llama2_layout_tokenizer_in_parent_folder(small_meta, tmp_path):
    """Meta's Llama 2 download keeps tokenizer.model beside the model folders."""
    root = tmp_path / "llama-2"
    model_dir = shutil.copytree(small_meta, root / "llama-2-7b")
    (model_dir / "tokenizer.model").rename(root / "tokenizer.model")
    hf = meta_to_hf(model_dir, tmp_path / "hf", progress=False)
    assert (hf / "tokenizer.model").read_bytes() == (root / "tokenizer.model").read_bytes()
