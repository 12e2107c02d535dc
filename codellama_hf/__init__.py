"""codellama_hf: reproduce, publish and use Code Llama with the Hugging Face stack."""

__version__ = "0.1.0"
