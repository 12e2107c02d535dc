"""The Code Llama family: 7B/13B/34B x base/Python/Instruct, named as Meta names them.

Only the 7B and 13B base and Instruct models can infill (the list in the README of Meta's codellama repository),
so only they have the 16 infilling pieces (vocabulary 32,016); the Python models and the 34B models keep Llama 2's
32,000. Meta publishes HF-format copies under the `codellama` organisation on the Hub.

How each member is made (paper §2, Figure 2), as `Variant.lineage` lists it with the recipe config of each stage:

    Llama 2 --code, FIM (32,016 pieces)--> LCFT ------------> Code Llama            7B, 13B
                                               `--> Instruct --> Code Llama - Instruct 7B, 13B
    Llama 2 --code, no FIM (32,000)--> Python --> LCFT --> Code Llama - Python   7B, 13B: code_nofim.yaml
    Llama 2 --code, no FIM (32,000)--> LCFT [--> Instruct]; --> Python --> LCFT   34B: code.yaml has no FIM
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("base", "python", "instruct")
META_SIZES = ("7b", "13b", "34b")
HUB_NAMESPACE = "codellama"  # where Meta's HF-format models live (also mirrored under meta-llama/)
_NAME = re.compile(r"^codellama-(?P<size>7b|13b|34b|tiny)(?:-(?P<kind>python|instruct))?(?:-hf)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """One member of the Code Llama family; `tiny` is this toolkit's CPU preset, named like the others."""

    size: str
    kind: str

    def __post_init__(self):
        if self.size not in (*META_SIZES, "tiny"):
            raise ValueError(f"unknown Code Llama size {self.size!r}; choose one of {', '.join(META_SIZES)} (or tiny)")
        if self.kind not in KINDS:
            raise ValueError(f"unknown Code Llama variant {self.kind!r}; choose one of {', '.join(KINDS)}")

    @property
    def name(self) -> str:
        """Meta's name: CodeLlama-7b, CodeLlama-7b-Python, CodeLlama-7b-Instruct."""
        return f"CodeLlama-{self.size}" + ("" if self.kind == "base" else f"-{self.kind.capitalize()}")

    @property
    def slot(self) -> str:
        """Short form used on command lines: 7b, 7b-python, 7b-instruct."""
        return self.size if self.kind == "base" else f"{self.size}-{self.kind}"

    @property
    def title(self) -> str:
        """How Meta's model card names it: Code Llama - Python 7B."""
        kind = {"base": "", "python": " - Python", "instruct": " - Instruct"}[self.kind]
        return f"Code Llama{kind} {self.size.upper() if self.size != 'tiny' else '(tiny)'}"

    @property
    def infilling(self) -> bool:
        """Trained with fill-in-the-middle: 7B/13B base and Instruct (and the tiny preset likewise)."""
        return self.kind != "python" and self.size != "34b"

    @property
    def chat(self) -> bool:
        return self.kind == "instruct"

    @property
    def vocab_size(self) -> int | None:
        if self.size == "tiny":
            return None
        return 32016 if self.infilling else 32000

    @property
    def lineage(self) -> tuple[tuple[str, str], ...]:
        """The stages that make this member, as (stage, recipe config under recipes/configs/<size>/), Llama 2 first.

        The Python models branch from a code stage without infilling and without the infilling pieces (paper §2.3:
        only 7B/13B base and Instruct infill), so for 7B/13B their first stage is `code_nofim.yaml`; 34B's code stage
        has no FIM already. The tiny preset follows 7B/13B.
        """
        if self.kind == "python":
            return (("code", "code" if self.size == "34b" else "code_nofim"), ("python", "python"), ("lcft", "lcft"))
        tail = (("instruct", "instruct"),) if self.kind == "instruct" else ()
        return (("code", "code"), ("lcft", "lcft"), *tail)

    @property
    def lineage_text(self) -> str:
        """One line for cards and help: Llama 2 → code (no FIM) → Python → LCFT."""
        names = {"python": "Python", "lcft": "LCFT", "instruct": "Instruct"}
        steps = [
            ("code (FIM)" if self.infilling else "code (no FIM)") if stage == "code" else names[stage]
            for stage, _ in self.lineage
        ]
        return " → ".join(["Llama 2", *steps])

    @property
    def hub_id(self) -> str | None:
        """Meta's HF-format repository (None for the tiny preset, which only exists where you push it)."""
        return None if self.size == "tiny" else f"{HUB_NAMESPACE}/{self.name}-hf"


FAMILY: tuple[Variant, ...] = tuple(Variant(size, kind) for size in META_SIZES for kind in KINDS)


def variant_from_name(name: str) -> Variant | None:
    """The family member a model or repo name refers to (CodeLlama-7b-Python, org/CodeLlama-13b-Instruct-hf)."""
    match = _NAME.match(str(name).rstrip("/").rsplit("/", 1)[-1])
    return Variant(match["size"].lower(), (match["kind"] or "base").lower()) if match else None


def parse_slot(slot: str) -> Variant:
    """`7b`, `7b-python`, `13b-instruct`, `tiny` ... -> Variant (clear error otherwise)."""
    size, _, kind = slot.lower().partition("-")
    try:
        return Variant(size, kind or "base")
    except ValueError as err:
        raise ValueError(f"{slot!r}: {err} (family slots look like 7b, 7b-python, 13b-instruct)") from None


def check_python_start(tokenizer, model_rows: int, source, lineage: dict | None = None) -> None:
    """Refuse to start the Python stage from a model trained with infilling or carrying the infilling pieces.

    Code Llama - Python has Llama 2's 32,000 pieces and no FIM training (paper §2.3; Meta's model card): continuing a
    FIM code model (32,016 rows, sentinels in the tokenizer) would publish a "Python" model that is neither. The
    7B/13B Python branch starts from recipes/configs/<size>/code_nofim.yaml instead.
    """
    from codellama_hf.tokenizer import SENTINELS, supports_infilling

    fim_stages = []
    record = lineage
    while isinstance(record, dict):
        if ((record.get("data") or {}).get("fim") or None) is not None:
            fim_stages.append(record.get("stage", "?"))
        record = (record.get("base_model") or {}).get("lineage")
    reasons = []
    if supports_infilling(tokenizer):
        reasons.append(f"its tokenizer has the infilling pieces ({', '.join(SENTINELS)}; {len(tokenizer)} tokens)")
    if model_rows != len(tokenizer):
        reasons.append(f"it has {model_rows} embedding rows for a {len(tokenizer)}-token tokenizer")
    if fim_stages:
        reasons.append(f"its lineage.json records FIM training in stage(s) {', '.join(fim_stages)}")
    if reasons:
        raise ValueError(
            f"the python stage cannot start from {source}: " + "; ".join(reasons) + ". Code Llama - Python has "
            "Llama 2's 32,000 pieces and no infilling training (paper §2.3): train the code stage without FIM "
            "first (recipes/configs/<size>/code_nofim.yaml, a tokenizer built with --no-infilling) and point "
            "model_name_or_path at its output"
        )
