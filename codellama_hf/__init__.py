"""codellama_hf: reproduce, publish and use Code Llama with the Hugging Face stack."""

__version__ = "0.1.0"

from codellama_hf.console import hold_back_quantization_notices
from codellama_hf.load import load  # cheap: torch is imported when a model is loaded

hold_back_quantization_notices()  # before anything imports bitsandbytes (codellama_hf.console says why)

__all__ = ["__version__", "load"]
