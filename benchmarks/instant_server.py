"""An OpenAI-compatible completions server that streams at once (no model): the far end for measuring replay's
own client overhead (benchmarks/client_speed.py). Not a test double: the tests run a real ``vllm serve``.

    python benchmarks/instant_server.py PORT [--token-gap-s S] [--cpu N]

Streams ``max_tokens`` chunks (one token each, with vLLM's continuous usage stats) for every
``POST /v1/completions``, ``--token-gap-s`` apart (0: all at once), then ``data: [DONE]``. Answers
``/v1/models`` and ``/health`` as vLLM does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from aiohttp import web


def app(token_gap_s: float) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "instant", "object": "model",
                                                              "max_model_len": 1 << 20}]})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="")

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n_in, n_out = len(body["prompt"]), int(body["max_tokens"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for k in range(1, n_out + 1):
            chunk = {"id": "cmpl-x", "object": "text_completion", "model": "instant",
                     "choices": [{"index": 0, "text": "", "finish_reason": "length" if k == n_out else None}],
                     "usage": {"prompt_tokens": n_in, "completion_tokens": k, "total_tokens": n_in + k}}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if token_gap_s:
                await asyncio.sleep(token_gap_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    a = web.Application()
    a.add_routes([web.get("/v1/models", models), web.get("/health", health),
                  web.post("/v1/completions", completions)])
    return a


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--token-gap-s", type=float, default=0.0)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = p.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    web.run_app(app(args.token_gap_s), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
