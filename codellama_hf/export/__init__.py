"""Models in the forms Code Llama users run: portable HF folders, GGUF for llama.cpp, Ollama Modelfiles."""
