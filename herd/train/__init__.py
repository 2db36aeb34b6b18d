"""Post-training as a library of small pure pieces (data, losses, LoRA) plus one recipe per method,
on the same herd/model/llama.py the engine serves. Layer rule: train/ imports herd.model,
herd.tokenizer, herd.config and herd.errors only; never the engine or the server.
"""
