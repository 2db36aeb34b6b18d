"""Herd's tool runtime: tools that run (code interpreter, web search, Wolfram Alpha, MCP servers)."""
