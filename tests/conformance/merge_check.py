"""Conformance check of the coordinator's wire format against the official clients.

1. The official ``openai`` client streams a chat completion from the coordinator
   (``--stream-url``), exactly as an OpenAI-compatible DIAL client would: base URL
   ``<url>/openai/deployments/mas-coordinator``, the ``Api-Key`` header, DIAL's
   ``api-version`` query.
2. The raw chunk dicts are folded with aidial-sdk's own non-streaming merge,
   ``aidial_sdk.utils.streaming.merge_chunks`` (aidial-sdk 0.27.0: ``merge`` of the
   chunks, then ``cleanup_indices`` on each choice's ``delta`` renamed to
   ``message``), fed the way aidial-sdk feeds it in block mode: the envelope
   (``id``, ``created``, ``object: chat.completion``) only on the first chunk.
3. The same request is sent non-streaming (``--block-url``, a second coordinator
   on a fresh world, so the worlds' counters agree) with the same client.

Prints a JSON report ``{"chunks", "typed_content", "streamed_state", "sdk_state",
"merged", "block"}`` on stdout and exits 1 when ``merged`` and ``block`` differ (``id`` and
``created`` aside).

The coordinator's non-streaming answer must equal the fold exactly, including
aidial-sdk's ``cleanup_indices`` inside ``custom_content.state`` (``sdk_state`` is
the folded state; ``streamed_state`` the state chunk as streamed).
"""

import argparse
import asyncio
import copy
import json
import sys

from aidial_sdk.utils.merge_chunks import cleanup_indices
from aidial_sdk.utils.streaming import merge_chunks
from openai import OpenAI

DEPLOYMENT = "mas-coordinator"
ENVELOPE = ("id", "created", "object")


def client(base_url: str) -> OpenAI:
    return OpenAI(
        # The openai client appends "/chat/completions" to the base URL.
        base_url=f"{base_url}/openai/deployments/{DEPLOYMENT}",
        # Required by the client; DIAL authenticates with Api-Key instead.
        api_key="unused",
        default_query={"api-version": "2024-08-01-preview"},
        max_retries=0,
        timeout=30,
    )


async def _aiter(items):
    for item in items:
        yield item


def fold(chunks: list) -> dict:
    first, *rest = chunks
    first = {**first, "object": "chat.completion"}
    rest = [{k: v for k, v in c.items() if k not in ENVELOPE} for c in rest]
    return asyncio.run(merge_chunks(_aiter([first, *rest])))


def strip(response: dict) -> dict:
    """Without id and created, and without the UMS endpoint tag in the state
    (the two answers come from two worlds, whose UMS listen on other ports)."""
    out = copy.deepcopy({k: v for k, v in response.items() if k not in ("id", "created")})
    for choice in out.get("choices") or []:
        state = ((choice.get("message") or {}).get("custom_content") or {}).get("state")
        if isinstance(state, dict):
            state.pop("ums_endpoint", None)
    return out


def streamed_state(chunks: list):
    states = [
        c["choices"][0]["delta"]["custom_content"]["state"]
        for c in chunks
        if c.get("choices")
        and "state" in (c["choices"][0].get("delta", {}).get("custom_content") or {})
    ]
    assert len(states) == 1, f"expected exactly one state chunk, got {len(states)}"
    return states[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-url", required=True)
    parser.add_argument("--block-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--messages", required=True, help="JSON array of messages")
    args = parser.parse_args()
    messages = json.loads(args.messages)
    headers = {"Api-Key": args.api_key}

    stream = client(args.stream_url).chat.completions.create(
        model=DEPLOYMENT, messages=messages, stream=True, extra_headers=headers
    )
    typed = list(stream)
    chunks = [chunk.to_dict() for chunk in typed]
    typed_content = "".join(
        c.choices[0].delta.content or "" for c in typed if c.choices
    )
    state = streamed_state(chunks)
    merged = fold(chunks)

    block = (
        client(args.block_url)
        .chat.completions.create(
            model=DEPLOYMENT, messages=messages, stream=False, extra_headers=headers
        )
        .to_dict()
    )

    sdk_state = merged["choices"][0]["message"]["custom_content"]["state"]

    report = {
        "chunks": len(chunks),
        "typed_content": typed_content,
        "streamed_state": state,
        "sdk_state": sdk_state,
        "merged": merged,
        "block": block,
    }
    print(json.dumps(report, ensure_ascii=False))

    if sdk_state != cleanup_indices(copy.deepcopy(state)):
        print(f"aidial-sdk folded the state unexpectedly: {sdk_state}", file=sys.stderr)
        return 1
    if strip(merged) != strip(block):
        print(
            "the folded stream differs from the non-streaming answer:\n"
            f"folded: {json.dumps(strip(merged), indent=1)}\n"
            f"block:  {json.dumps(strip(block), indent=1)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
