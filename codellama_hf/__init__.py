"""codellama_hf: reproduce, publish and use Code Llama with the Hugging Face stack."""

__version__ = "0.1.0"

from codellama_hf.load import load  # cheap: torch is imported when a model is loaded

__all__ = ["__version__", "load"]
