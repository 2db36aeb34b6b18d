"""Herd: the Llama 3.1 system in one package."""
__version__ = "0.1.0"
