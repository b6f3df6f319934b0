"""leap-harness: prune LLMs with several methods under one protocol and report who wins."""

__version__ = "0.1.0"
