"""LoRA and QLoRA for every training stage: options, wrapping a model, attaching a saved adapter, merging it.

`AdapterArguments` is one more dataclass for a stage recipe. With `use_peft` the stage trains low-rank adapters on
the attention and MLP projections instead of every weight (LoRA, Hu et al., 2021, arXiv:2106.09685); with
`load_in_4bit` the frozen base is stored in bitsandbytes NF4 (QLoRA) or with `load_in_8bit` in int8. The next stage
continues from a plain model folder, so the stage ends with `merge_and_save`.

Modules, in the order a stage uses them: `options` (the dataclass, quantized loading), `new_rows` (the embedding
rows a grown vocabulary adds, trained and saved without the whole matrices), `fingerprint` (what identifies the base
an adapter belongs to), `wrap` (apply_adapters, save_adapter with codellama_adapter.json), `saved` (read, check,
attach and merge a saved adapter).
"""

from codellama_hf.adapters.fingerprint import base_fingerprint, check_base, fingerprint_mismatch
from codellama_hf.adapters.new_rows import grown_rows, new_row_tokens, trained_rows
from codellama_hf.adapters.options import QUANT_TYPES, AdapterArguments, model_loading_kwargs
from codellama_hf.adapters.saved import (
    ADAPTER_CONFIG,
    apply_trained_config,
    load_adapter,
    merge_and_save,
    read_adapter,
    trained_config_overrides,
)
from codellama_hf.adapters.wrap import (
    METADATA_FILE,
    adapter_size,
    apply_adapters,
    save_adapter,
    write_adapter_metadata,
)

__all__ = [
    "ADAPTER_CONFIG",
    "METADATA_FILE",
    "QUANT_TYPES",
    "AdapterArguments",
    "adapter_size",
    "apply_adapters",
    "apply_trained_config",
    "base_fingerprint",
    "check_base",
    "fingerprint_mismatch",
    "grown_rows",
    "load_adapter",
    "merge_and_save",
    "model_loading_kwargs",
    "new_row_tokens",
    "read_adapter",
    "save_adapter",
    "trained_config_overrides",
    "trained_rows",
    "write_adapter_metadata",
]
