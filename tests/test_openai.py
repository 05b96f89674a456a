"""The OpenAI-compatible routes, called with the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from online.answers import extract_answer
from online.datasets import load_dataset
from serve.api import ChatCompletionRequest

pytestmark = pytest.mark.timeout(300)

# All 30 recorded samples of this question answer 51, so any vote returns the gold answer.
QUESTION = load_dataset("svamp")[0]


@pytest.fixture
def client(service_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{service_url}/v1", api_key="unused", max_retries=0, timeout=60.0
    ) as client:
        yield client


@pytest.mark.integration
def test_chat_completion_answers_question(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="auto",
        messages=[
            {"role": "system", "content": "Answer the math word problem."},
            {"role": "user", "content": QUESTION.question},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "auto"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert extract_answer(choice.message.content) == QUESTION.gold

    allocation = (completion.model_extra or {})["allocation"]
    assert allocation["answer"] == QUESTION.gold
    samples = allocation["action"]["samples"]
    assert allocation["action"]["name"] == f"vote@{samples}"
    assert allocation["samples_used"] == samples
    assert allocation["cost"] == float(samples)
    assert allocation["votes"] == {QUESTION.gold: samples}
    assert allocation["lambda"] >= 0

    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    total = completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.total_tokens == total


@pytest.mark.integration
def test_chat_completion_id_takes_feedback(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION.question}]
    )
    response = client.post(
        "/feedback",
        body={"id": completion.id, "correct_answer": QUESTION.gold},
        cast_to=object,
    )
    assert response == {"id": completion.id, "accepted": True, "correct": True, "learned": True}


@pytest.mark.integration
def test_models_lists_auto(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [model.id for model in models] == ["auto"]
    assert models[0].object == "model"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": "gpt-4o"}, ["'model'", "gpt-4o"]),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, ["'messages'", "'user'"]),
        ({"messages": [{"role": "user", "content": "  "}]}, ["'messages'", "no text"]),
        ({"messages": []}, ["'messages'"]),
        ({"stream": True}, ["'stream'", "not supported"]),
        ({"n": 3}, ["'n'", "only 1"]),
    ],
)
def test_chat_completion_bad_input(
    client: openai.OpenAI, changes: dict, expected: list[str]
) -> None:
    arguments = {"model": "auto", "messages": [{"role": "user", "content": QUESTION.question}]}
    arguments.update(changes)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(**arguments)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request"
    for text in expected:
        assert text in error["message"]


def test_request_question_is_last_user_text() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "auto",
            "messages": [
                {"role": "user", "content": "an earlier question"},
                {"role": "assistant", "content": "an earlier reply"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "How many apples"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": "are left?"},
                    ],
                },
            ],
        }
    )
    assert body.question() == "How many apples\nare left?"


def test_request_level_string_becomes_number() -> None:
    metadata = {"level": "5", "source": "math"}
    body = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "x"}], "metadata": metadata}
    )
    assert body.metadata == {"level": 5, "source": "math"}
    assert metadata == {"level": "5", "source": "math"}
