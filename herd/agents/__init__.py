"""Herd's agents: an agent loop (model -> tools -> model, shields in the loop) with sessions and turns
that survive a restart. The HTTP surface (Llama Stack agents API) is herd/serve/agents.py."""
