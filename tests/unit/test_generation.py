"""The generation interface: refilled HF batches, the OpenAI-endpoint back end over real HTTP, the vLLM back end
(when importable), finish reasons and the shared post-processing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from codellama_hf.generation import LENGTH, Decoding, HFBackend, get_backend
from codellama_hf.generation.endpoint import EndpointError, OpenAIBackend
from codellama_hf.tokenizer import encode, infilling_prompt
from tests.helpers.openai_server import CompletionsServer

PROMPTS = [
    "def add(a, b):\n",
    "import os\n\n\nclass Config:\n    path = os.getcwd()\n",
    "x = 1\n",
    "# sort a list\ndef sort(values):\n    return",
    "for i in range(10):\n",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer))).eval()


def _rows_per_forward(model):
    """Record the batch size and length of every forward pass of `model`."""
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes, handle


def test_refilled_batches_equal_one_at_a_time_greedy(tiny_model, tiny_tokenizer):
    """Prompts of different lengths share two slots: finished rows leave and queued prompts take their slot, and every
    completion equals the prompt's own one-row greedy run (stop sequences and the cap end rows)."""
    decoding = Decoding(max_new_tokens=12, stop=("\n\n", "(("))
    shapes, handle = _rows_per_forward(tiny_model)
    try:
        batched = HFBackend(tiny_model, tiny_tokenizer, batch_size=2).complete(PROMPTS, decoding)
    finally:
        handle.remove()
    single = [HFBackend(tiny_model, tiny_tokenizer, batch_size=1).complete([p], decoding)[0] for p in PROMPTS]
    assert batched == single
    prefills = [s for s in shapes if s[1] > 1]
    assert len(prefills) >= 3  # 5 prompts, 2 slots: refilled from the queue
    assert max(s[0] for s in shapes) == 2 and any(s == (1, 1) for s in shapes)  # rows left the batch
    reasons = {c[0].finish_reason for c in batched}
    assert reasons <= {"stop", "eos", "length"} and all(c[0].num_tokens <= 12 for c in batched)


def test_token_cap_is_reported(tiny_model_factory, tiny_tokenizer):
    word = encode(tiny_tokenizer, "value")[0]
    model = tiny_model_factory(len(tiny_tokenizer))
    head = torch.nn.Linear(model.config.hidden_size, len(tiny_tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[word] = 10.0
    model.lm_head = head
    backend = HFBackend(model, tiny_tokenizer, batch_size=4)
    ((capped,),) = backend.complete(["a = 1\n"], Decoding(max_new_tokens=5))
    assert capped.finish_reason == LENGTH and capped.truncated and capped.num_tokens == 5
    ((stopped,),) = backend.complete(["b = 2\n"], Decoding(max_new_tokens=5, stop=("value value",)))
    assert stopped.finish_reason == "stop" and not stopped.truncated and stopped.text == " "
    with torch.no_grad():
        head.bias[word] = 0.0
        head.bias[tiny_tokenizer.eos_token_id] = 10.0
    ((ended,),) = backend.complete(["c = 3\n"], Decoding(max_new_tokens=5))
    assert ended.finish_reason == "eos" and ended.text == "" and ended.num_tokens == 0


def test_sampling_n_per_prompt_and_seed(tiny_model, tiny_tokenizer):
    decoding = Decoding(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.95, n=3, seed=7)
    backend = HFBackend(tiny_model, tiny_tokenizer, batch_size=4)
    first = backend.complete(PROMPTS[:2], decoding)
    assert [len(cs) for cs in first] == [3, 3]
    assert first == backend.complete(PROMPTS[:2], decoding)
    with pytest.raises(ValueError, match="needs do_sample"):
        Decoding(max_new_tokens=4, n=2)


def test_openai_backend_matches_hf_over_http(tiny_model, tiny_tokenizer):
    """Same prompts as token ids, same stop handling and decoding: the same completions as the HF back end."""
    decoding = Decoding(max_new_tokens=12, stop=("\n\n",))
    hf = HFBackend(tiny_model, tiny_tokenizer, batch_size=3)
    with CompletionsServer(tiny_model, tiny_tokenizer) as server:
        backend = OpenAIBackend.connect(server.url, tokenizer=tiny_tokenizer, concurrency=2)
        assert backend.model == "loopback-model"
        assert backend.complete(PROMPTS[:3], decoding) == hf.complete(PROMPTS[:3], decoding)
        sent = sorted(map(tuple, (r["prompt"] for r in server.requests)))
        assert sent == sorted(tuple(tiny_tokenizer(p)["input_ids"]) for p in PROMPTS[:3])
        assert all(r["return_token_ids"] and r["stop"] == ["\n\n"] and r["temperature"] == 0 for r in server.requests)

        server.requests.clear()
        prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
        got = backend.infill([prefix], [suffix], Decoding(max_new_tokens=6), suffix_first=True)
        assert got == hf.infill([prefix], [suffix], Decoding(max_new_tokens=6), suffix_first=True)
        (request,) = server.requests
        assert request["prompt"] == infilling_prompt(tiny_tokenizer, prefix, suffix, suffix_first=True)
        assert request["stop_token_ids"][-1] == tiny_tokenizer.convert_tokens_to_ids("▁<EOT>")

        text_only = OpenAIBackend(server.url, model=server.name)  # no tokenizer: text prompts, the server's text
        assert text_only.complete(PROMPTS[:1], decoding)[0][0].text == hf.complete(PROMPTS[:1], decoding)[0][0].text
        with pytest.raises(ValueError, match="needs the model's tokenizer"):
            text_only.infill([prefix], [suffix], Decoding(max_new_tokens=4))
        with pytest.raises(EndpointError, match="HTTP 404"):
            OpenAIBackend(server.url, model="other", retries=0).complete(["x"], decoding)


def test_openai_backend_asks_again_for_missing_choices(tiny_model, tiny_tokenizer):
    decoding = Decoding(max_new_tokens=4, do_sample=True, temperature=1.0, top_p=1.0, n=3, seed=1)
    with CompletionsServer(tiny_model, tiny_tokenizer, max_choices=1) as server:
        backend = OpenAIBackend.connect(server.url, tokenizer=tiny_tokenizer)
        (completions,) = backend.complete(PROMPTS[:1], decoding)
        assert len(completions) == 3 and [r["n"] for r in server.requests] == [3, 2, 1]
        assert [r["seed"] for r in server.requests] == [1, 2, 3]


def test_openai_backend_unreachable_server_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(EndpointError, match="vllm serve"):
        OpenAIBackend.connect("http://127.0.0.1:9/v1", tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="base URL"):
        OpenAIBackend("http://127.0.0.1:9/v1/completions", model="m")
    with pytest.raises(ValueError, match="choose one of hf, vllm, openai"):
        get_backend("tgi", "model")
    with pytest.raises(ValueError, match="needs --url"):
        get_backend("openai", "model")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (optional back end)")
def test_vllm_backend_matches_hf(tmp_path, tiny_model, tiny_tokenizer):
    import os

    from codellama_hf.generation.vllm_engine import VLLMBackend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    decoding = Decoding(max_new_tokens=12, stop=("\n\n",))
    vllm_backend = VLLMBackend.from_pretrained(str(tmp_path), dtype="float32")
    assert vllm_backend.complete(PROMPTS, decoding) == HFBackend(tiny_model, tiny_tokenizer).complete(
        PROMPTS, decoding
    )


def test_vllm_backend_missing_is_a_clear_error():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    with pytest.raises(ImportError, match="--backend openai"):
        get_backend("vllm", "some/model")
