"""Warm serving: long-lived workers per model, a micro-batcher, the V2 protocol."""
