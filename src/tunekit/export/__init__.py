"""Exporting a tuned model to formats other tools run: GGUF (llama.cpp, Ollama)."""

from tunekit.export.gguf import export_gguf

__all__ = ["export_gguf"]
