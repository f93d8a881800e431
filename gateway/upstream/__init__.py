"""Upstream backends: pools, discovery, health, usage injection, and the Ollama simulator."""
