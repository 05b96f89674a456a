"""Replies of the OpenAI-compatible routes, built from the body of a ``/v1/solve`` reply."""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_ID", "chat_completion", "model_list"]

MODEL_ID = "auto"
"""The one model the service lists: the allocator that chooses how many samples to vote."""

# The fields of a /v1/solve reply that a chat completion's ``allocation`` carries.
_ALLOCATION_KEYS = (
    "answer",
    "action",
    "samples_used",
    "cost",
    "lambda",
    "votes",
    "rounds",
    "probe",
)


def chat_completion(solved: dict[str, Any], created: int) -> dict[str, Any]:
    """Return an OpenAI ``chat.completion`` object for one solved question.

    The message is the text of a sample whose answer won the vote, or an empty string when no
    sample had an answer that could be extracted. ``usage`` adds up the token counts that the LLM
    server reported for the request's calls (one per round). ``allocation`` is the service's own
    field, with what ``/v1/solve`` reports besides the text (``money`` only when the backend has
    token prices). ``created`` is in Unix seconds.

    >>> solved = {"id": "chatcmpl-1", "answer": "51", "text": "... 51", "cost": 3.0,
    ...           "action": {"name": "vote@3", "samples": 3}, "samples_used": 3,
    ...           "lambda": 0.01, "votes": {"51": 3}, "rounds": 1, "probe": False,
    ...           "usage": {"prompt_tokens": 30, "completion_tokens": 90}}
    >>> reply = chat_completion(solved, 1700000000)
    >>> reply["choices"][0]["message"]["content"], reply["usage"]["total_tokens"]
    ('... 51', 120)
    >>> reply["allocation"]["action"]["samples"], reply["allocation"]["cost"]
    (3, 3.0)
    >>> chat_completion({**solved, "money": 0.0012}, 1700000000)["allocation"]["money"]
    0.0012
    """
    prompt_tokens = int(solved["usage"]["prompt_tokens"])
    completion_tokens = int(solved["usage"]["completion_tokens"])
    allocation = {key: solved[key] for key in _ALLOCATION_KEYS}
    if "money" in solved:
        allocation["money"] = solved["money"]
    return {
        "id": solved["id"],
        "object": "chat.completion",
        "created": created,
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": solved["text"] or ""},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "allocation": allocation,
    }


def model_list(created: int) -> dict[str, Any]:
    """Return the OpenAI list of models, which contains only `MODEL_ID`.

    >>> model_list(1700000000)["data"][0]["id"]
    'auto'
    """
    model = {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "ttc-allocator"}
    return {"object": "list", "data": [model]}
