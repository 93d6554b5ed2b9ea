"""Parts of benchmarks/service.py, each readable alone: harness (the server), load (the client), report."""
