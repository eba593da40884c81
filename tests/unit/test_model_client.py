"""The model client against real HTTP servers: answers over the size limit, hanging models."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from logistik.answer import Outcome
from logistik.handler import Handler
from logistik.routing.model_client import ModelClient
from tests.support.models import ModelServer, Reply
from tests.support.raw_models import Mode, RawModel

LIMIT = 64 * 1024
EVENT = orjson.dumps({"id": "e1", "verb": "detect"})


def handler_at(port: int) -> Handler:
    return Handler(
        name="m",
        event="detect",
        endpoint="127.0.0.1",
        port=port,
        path="/predict",
        return_to="m-results",
    )


def big_reply(status: int) -> Any:
    return lambda event, count: (
        Reply(status, raw=b'{"pad": "' + b"x" * (2 * LIMIT) + b'"}') if count == 1 else Reply()
    )


async def test_an_answer_over_the_limit_is_rejected_unread_and_the_model_still_answers() -> None:
    with ModelServer(big_reply(200)) as server:
        async with ModelClient(max_answer_bytes=LIMIT) as client:
            answer = await client.call(handler_at(server.port), EVENT, 5)
            assert (answer.outcome, answer.status) == (Outcome.REJECTED, 200)
            assert answer.error == (
                f"HTTP 200 with a body over {LIMIT} bytes (routing.max_answer_bytes)"
            )
            after = await client.call(handler_at(server.port), EVENT, 5)
    assert after.outcome is Outcome.IGNORED  # an empty 200: the next call is read as usual


async def test_a_failed_answer_over_the_limit_keeps_the_meaning_of_its_status() -> None:
    with ModelServer(big_reply(503)) as server:
        async with ModelClient(max_answer_bytes=LIMIT) as client:
            answer = await client.call(handler_at(server.port), EVENT, 5)
    assert (answer.outcome, answer.status) == (Outcome.RETRY, 503)
    assert answer.error == f"HTTP 503: a body over {LIMIT} bytes"


@pytest.mark.parametrize(("size", "outcome"), [(LIMIT - 10, Outcome.OK), (LIMIT + 10, None)])
async def test_a_chunked_answer_is_read_up_to_the_limit(size: int, outcome: Outcome | None) -> None:
    with RawModel("chunked", size=size) as model:
        async with ModelClient(max_answer_bytes=LIMIT) as client:
            answer = await client.call(handler_at(model.port), EVENT, 5)
    if outcome is Outcome.OK:
        assert answer.outcome is Outcome.OK
        assert orjson.loads(answer.body)["id"] == "e1"
        assert len(answer.body) == size
    else:
        assert answer.outcome is Outcome.REJECTED
        assert "routing.max_answer_bytes" in answer.error


@pytest.mark.parametrize("mode", ["drip", "short", "silent"])
async def test_a_model_that_never_finishes_its_answer_times_out(mode: Mode) -> None:
    with RawModel(mode) as model:
        async with ModelClient() as client:
            answer = await client.call(handler_at(model.port), EVENT, 0.5)
            model.healed.set()
            healed = await client.call(handler_at(model.port), EVENT, 5)
    assert answer.outcome is Outcome.RETRY and answer.timed_out
    assert answer.error == "timeout after 0.5 s"
    assert healed.outcome is Outcome.OK and orjson.loads(healed.body)["id"] == "e1"
