"""Serve the original ChatStream (chatstream==0.3.0) on a model directory, for side-by-side runs.

This script runs in its own virtual environment (chatstream is AGPL and pins
its own stack; see `benchmarks/peers/commands.py`), so it imports nothing from this
project. It uses only the package's documented public API: ChatStream(...),
append_middlewares, start_queue_worker and handle_chat_stream_request.

    benchmarks/.venv-chatstream/bin/python benchmarks/peers/original_chatstream.py --model DIR --port P
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager

import torch
import uvicorn
from chatstream import ChatStream
from chatstream.chat_prompt_presets.chat_prompt_metallama_llama2 import ChatPromptMetaLlamaLlama2Chat
from fastapi import FastAPI, Request
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model.eval()
    chat_stream = ChatStream(
        model=model,
        tokenizer=tokenizer,
        device="cpu",
        num_of_concurrent_executions=args.concurrency,
        max_queue_size=args.queue_size,
        too_many_request_as_http_error=True,  # its own option: a real 429 instead of 200 + error body
        chat_prompt_clazz=ChatPromptMetaLlamaLlama2Chat,
        max_new_tokens=args.max_new_tokens,
        context_len=2048,
        temperature=0.7,
        top_p=0.95,
    )
    # The benchmark compares fixed-length answers: no token id is -1, so only
    # max_new_tokens ends a generation (the gateway's `ignore_eos`).
    chat_stream.chat_generator.params["stop_ids"] = [-1]

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await chat_stream.start_queue_worker()
        yield

    app = FastAPI(lifespan=lifespan)
    chat_stream.append_middlewares(app)

    @app.post("/chat_stream")
    async def stream_api(request: Request):  # type: ignore[no-untyped-def]
        return await chat_stream.handle_chat_stream_request(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
