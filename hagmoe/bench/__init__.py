"""Benchmarks beside the engine: the offline engine against static batching and naive recompute."""
