"""One generation interface for every back end: the same prompt ids in, the same post-processing out.

A back end (`hf`, `vllm`, `openai`) only turns prompt token ids into generated token ids (or, for a server that
cannot return ids, text). Everything a score depends on is done here, once, for all of them:

- prompts are encoded here: text with the tokenizer's BOS, infilling with Meta's exact PSM/SPM ids
  (`codellama_hf.tokenizer.infilling_prompt`; vLLM has no suffix support, so servers get token-id prompts);
- a completion is the decoded prompt + generation minus the decoded prompt, so SentencePiece's leading space of
  the first new token is kept; an infilling middle is decoded with Meta's `decode_infilling`;
- the text is cut before the first stop sequence (bigcode-evaluation-harness' `_stop_at_stop_token`);
- each completion says why it ended: "stop" (a stop sequence), "eos" (EOS or ▁<EOT>) or "length" (the token cap cut
  it), so results can report completions the cap truncated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.8, 0.95
STOP, EOS, LENGTH = "stop", "eos", "length"


@dataclass(frozen=True)
class Decoding:
    """How to sample: greedy by default; `n` completions per prompt need sampling."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.n > 1 and not self.do_sample:
            raise ValueError("n > 1 samples per prompt needs do_sample=True (greedy decoding would repeat itself)")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(
                f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {self.temperature}, {self.top_p})"
            )
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


@dataclass(frozen=True)
class Raw:
    """What a back end produced for one sample: generated ids (preferred) or, failing that, text."""

    token_ids: list[int] | None
    finish_reason: str  # STOP | EOS | LENGTH as the back end saw it
    text: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # STOP | EOS | LENGTH
    num_tokens: int | None = None

    @property
    def truncated(self) -> bool:
        """The token cap ended this completion (it may be unfinished code)."""
        return self.finish_reason == LENGTH


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` before the earliest occurrence of any stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("tokenizer has no pad, unk or eos token to pad batches with")


class Backend(ABC):
    """Subclasses implement `_generate`; `complete` and `infill` are shared by all back ends."""

    kind = ""

    def __init__(self, tokenizer, *, name: str = ""):
        self.tokenizer, self.name = tokenizer, name

    @abstractmethod
    def _generate(
        self, prompts: list[list[int]], decoding: Decoding, *, eos: list[int], progress: str | None
    ) -> list[list[Raw]]:
        """`decoding.n` Raw outputs per prompt. Stop at any id in `eos` or at a stop sequence (optional: the text
        is cut here anyway, stopping only saves time) or after `decoding.max_new_tokens` tokens."""

    def describe(self) -> dict:
        """What results record about the back end."""
        return {"backend": self.kind, "name": self.name}

    def vocab_size(self) -> int | None:
        """Rows of the model's embedding matrix, when the back end knows it (checks infilling ids)."""
        return None

    def encode(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
        """Token ids: text is encoded with the tokenizer's special tokens (BOS); id lists pass through."""
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else [])
        return [list(next(encoded)) if isinstance(p, str) else list(p) for p in prompts]

    def complete(
        self, prompts: Sequence[str | Sequence[int]], decoding: Decoding, *, progress: str | None = None
    ) -> list[list[Completion]]:
        """`decoding.n` completions per prompt (text or token ids), each cut before its first stop sequence."""
        ids = self.encode(prompts)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        raws = self._generate(ids, decoding, eos=eos, progress=progress)
        return [[self._finish(p, r, decoding.stop, eos) for r in rs] for p, rs in zip(ids, raws, strict=True)]

    def infill(
        self,
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        decoding: Decoding,
        *,
        suffix_first: bool = False,
        progress: str | None = None,
    ) -> list[list[Completion]]:
        """Middles in Meta's PSM (or SPM with `suffix_first`) format; generation ends at ▁<EOT> or EOS."""
        from codellama_hf.tokenizer import infill_ids, infilling_prompt

        if len(prefixes) != len(suffixes):
            raise ValueError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
        ids = infill_ids(self.tokenizer)  # clear ValueError for a tokenizer without infilling pieces
        vocab = self.vocab_size()
        if vocab is not None and max(ids.prefix, ids.suffix, ids.middle, ids.eot) >= vocab:
            raise ValueError(
                f"the model's vocabulary ({vocab} tokens) has no infilling tokens (ids {ids.prefix}-"
                f"{ids.eot}): it was not trained for infilling"
            )
        prompts = [
            infilling_prompt(self.tokenizer, p, s, suffix_first=suffix_first)
            for p, s in zip(prefixes, suffixes, strict=True)
        ]
        eos = [ids.eos, ids.eot]
        raws = self._generate(prompts, decoding, eos=eos, progress=progress)
        return [[self._finish_infill(r, eos) for r in rs] for rs in raws]

    # -- shared post-processing ------------------------------------------------------------------------------

    @staticmethod
    def _until_eos(raw: Raw, eos: Sequence[int]) -> tuple[list[int], str]:
        ids = raw.token_ids or []
        end = next((j for j, token in enumerate(ids) if token in eos), None)
        if end is not None:
            return ids[:end], EOS
        return ids, raw.finish_reason

    def _finish(self, prompt: list[int], raw: Raw, stop: Sequence[str], eos: Sequence[int]) -> Completion:
        if raw.token_ids is None:
            text, reason, count = raw.text or "", raw.finish_reason, None
        else:
            generated, reason = self._until_eos(raw, eos)
            head = self.tokenizer.decode(prompt, skip_special_tokens=True)
            full = self.tokenizer.decode(prompt + generated, skip_special_tokens=True)
            text = (
                full[len(head) :]
                if full.startswith(head)
                else self.tokenizer.decode(generated, skip_special_tokens=True)
            )
            count = len(generated)
        cut = truncate_at_stop(text, stop)
        if len(cut) < len(text):
            reason = STOP
        return Completion(cut, reason, count)

    def _finish_infill(self, raw: Raw, eos: Sequence[int]) -> Completion:
        from codellama_hf.tokenizer import decode_infilling

        if raw.token_ids is None:
            return Completion(raw.text or "", raw.finish_reason, None)
        generated, reason = self._until_eos(raw, eos)
        return Completion(decode_infilling(self.tokenizer, generated), reason, len(generated))
