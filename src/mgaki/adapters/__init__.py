"""Adapters: source formats in, canonical records/events out. Written once each."""
