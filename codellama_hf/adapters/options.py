"""LoRA / QLoRA options of a stage (`AdapterArguments`) and the `from_pretrained` arguments of a quantized base.

The field names are trl.ModelConfig's, so YAML recipes read like TRL's. `load_in_4bit` stores the frozen base in
bitsandbytes NF4 with double quantization, as in the QLoRA paper (Dettmers et al., 2023, arXiv:2305.14314).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codellama_hf.io import torch_dtype

QUANT_TYPES = ("nf4", "fp4")


@dataclass
class AdapterArguments:
    """LoRA / QLoRA options of a training stage (names as in trl.ModelConfig)."""

    use_peft: bool = field(
        default=False, metadata={"help": "Train LoRA adapters instead of all weights (the base stays frozen)."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha: the update is scaled by alpha/r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt; default: every linear layer of the decoder (q/k/v/o, gate/up/down), "
            "as in the QLoRA paper. The output layer is never adapted."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full beside the adapters. When the vocabulary grew (Llama 2 -> Code "
            "Llama's infilling pieces) only the new embedding rows are trained and saved by default; "
            "[embed_tokens, lm_head] trains the whole matrices instead."
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha/sqrt(r)."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: keep the frozen base in bitsandbytes 4-bit (needs use_peft)."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Keep the frozen base in bitsandbytes int8 (needs use_peft)."}
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA) or fp4.", "choices": list(QUANT_TYPES)}
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "Quantize the 4-bit scales too (QLoRA's double quantization)."}
    )
    bnb_4bit_quant_storage: str | None = field(
        default=None,
        metadata={
            "help": "Storage dtype of 4-bit weights; set it to the compute dtype (bfloat16) to shard QLoRA "
            "with FSDP or DeepSpeed ZeRO-3."
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "After training, write merged full weights to output_dir (the adapter itself goes to "
            "output_dir/adapter), so the next stage continues from a plain model folder."
        },
    )

    def __post_init__(self):
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: choose one quantization of the base")
        if self.quantized and not self.use_peft:
            raise ValueError(
                "a quantized base cannot be trained directly: load_in_4bit/load_in_8bit need use_peft "
                "(QLoRA trains adapters on top of the frozen quantized weights)"
            )
        if self.bnb_4bit_quant_type not in QUANT_TYPES:
            raise ValueError(f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r}: choose one of {QUANT_TYPES}")
        if not (isinstance(self.lora_r, int) and self.lora_r > 0):
            raise ValueError(f"lora_r={self.lora_r!r}: must be a positive integer")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha={self.lora_alpha!r}: must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout!r}: must be in [0, 1)")

    @property
    def quantized(self) -> str | None:
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None

    def lora_config(self, trainable_token_indices: dict[str, list[int]] | list[int] | None = None):
        """peft.LoraConfig for these options (None without use_peft); rows to train given by apply_adapters."""
        if not self.use_peft:
            return None
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules or "all-linear",
            modules_to_save=self.lora_modules_to_save,
            trainable_token_indices=trainable_token_indices,
            use_rslora=self.use_rslora,
            bias="none",
        )

    def quantization_config(self, compute_dtype="bfloat16"):
        """transformers.BitsAndBytesConfig for the base (None when not quantized)."""
        if not self.quantized:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        from codellama_hf.console import show_quantization_notices

        show_quantization_notices()

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        dtype = torch_dtype(compute_dtype)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=self.use_bnb_nested_quant,
            bnb_4bit_quant_storage=self.bnb_4bit_quant_storage or torch.uint8,
        )


def model_loading_kwargs(options: AdapterArguments, compute_dtype="bfloat16") -> dict:
    """Extra `from_pretrained` arguments for a quantized base: the bnb config and where each process puts it.

    bitsandbytes places weights at load time, so every data-parallel process loads onto its own device; under
    DeepSpeed ZeRO-3 the weights are partitioned instead and no device map may be given.
    """
    if not options.quantized:
        return {}
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    kwargs = {"quantization_config": options.quantization_config(compute_dtype)}
    if not is_deepspeed_zero3_enabled():
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
        else:
            kwargs["device_map"] = {"": "cpu"}
    return kwargs
