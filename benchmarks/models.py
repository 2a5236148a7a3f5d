"""Benchmark models: random-weight Llamas of a chosen size, built on demand and never committed.

The tiny test model prefills a whole conversation in a few milliseconds, so a
prefix-cache hit hardly shows in its latency. A model of tens to hundreds of
millions of weights costs on this CPU what a real model costs on a GPU
relative to its decode step: re-reading a long conversation is slow, and a
cache hit is visible. Built the same offline way as the tiny one
(`gateway.tiny_model`), deterministically, under benchmarks/.models/.
"""

from __future__ import annotations

from pathlib import Path

from gateway.tiny_model import ModelShape, build_tiny_model, is_model_dir

MODELS = Path(__file__).resolve().parent / ".models"


def benchmark_model(shape: ModelShape, seed: int = 0) -> Path:
    """The directory of a model of `shape`, built there first if it is not yet."""
    directory = MODELS / f"llama-h{shape.hidden_size}-l{shape.layers}-s{seed}"
    if not is_model_dir(directory):
        build_tiny_model(directory, seed=seed, shape=shape)
    return directory
