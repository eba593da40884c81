"""The model client against real HTTP servers: answers over the size limit, hanging models."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from logistik.answer import Outcome
from logistik.handler import Handler
from logistik.kafka.embedded import free_port
from logistik.routing.http_pool import _Connection
from logistik.routing.model_client import ModelClient
from tests.support.models import ModelServer, Reply, wait_until_async
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


async def test_calls_with_different_deadlines_each_end_at_their_own() -> None:
    # One sweep serves every deadline: a sooner one set after a later one must not wait for it,
    # and the sweep must go on to the deadlines left after it.
    loop = asyncio.get_running_loop()
    with RawModel("silent") as model:
        async with ModelClient() as client:

            async def timed(timeout_s: float, after: int) -> tuple[float, str | None]:
                # Sent once the model has the calls before it: the long deadline is set first.
                await wait_until_async(lambda: model.requests >= after)
                started = loop.time()
                answer = await client.call(handler_at(model.port), EVENT, timeout_s)
                assert answer.timed_out
                return loop.time() - started, answer.error

            ended = await asyncio.gather(timed(3, 0), timed(0.3, 1), timed(0.6, 2))
    (long_s, long_error), (short_s, short_error), (middle_s, middle_error) = ended
    assert (long_error, short_error, middle_error) == (
        "timeout after 3 s",
        "timeout after 0.3 s",
        "timeout after 0.6 s",
    )
    assert 0.3 <= short_s < 1.5 and 0.6 <= middle_s < 1.5 and long_s >= 3


async def test_retry_after_and_trace_headers_cross_the_client() -> None:
    busy = Reply(503, {"error": "busy"}, headers={"Retry-After": "7"})
    with ModelServer(lambda event, count: busy) as server:
        async with ModelClient() as client:
            trace = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
            answer = await client.call(handler_at(server.port), EVENT, 5, trace)
    assert (answer.outcome, answer.status, answer.retry_after_s) == (Outcome.RETRY, 503, 7.0)
    assert server.traceparents == [trace["traceparent"]]


async def test_a_redirect_is_not_followed() -> None:
    moved = Reply(302, {"moved": True}, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    with ModelServer(lambda event, count: moved) as server:
        async with ModelClient() as client:
            answer = await client.call(handler_at(server.port), EVENT, 5)
    assert (answer.outcome, answer.status) == (Outcome.REJECTED, 302)
    assert server.count == 1


async def test_an_unreachable_model_is_named_in_one_line() -> None:
    nobody = free_port()
    async with ModelClient() as client:
        answer = await client.call(handler_at(nobody), EVENT, 5)
    assert answer.outcome is Outcome.RETRY and not answer.timed_out
    assert answer.error == f"cannot connect to 127.0.0.1:{nobody}: Connection refused"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("hangup", "the model closed the connection without answering"),
        ("garbage", "not HTTP"),
    ],
)
async def test_a_model_that_answers_no_http_is_retried_with_the_reason(
    mode: Mode, error: str
) -> None:
    with RawModel(mode) as model:
        async with ModelClient() as client:
            answer = await client.call(handler_at(model.port), EVENT, 5)
            model.healed.set()
            healed = await client.call(handler_at(model.port), EVENT, 5)
    assert answer.outcome is Outcome.RETRY and not answer.timed_out
    assert error in answer.error and "\n" not in answer.error
    assert healed.outcome is Outcome.OK


async def test_a_model_that_closes_each_connection_after_answering_answers_every_call() -> None:
    # A connection the model closed may be taken for the next call before its close is seen:
    # that call goes again on a new connection, and the model still sees each call once.
    with RawModel("once") as model:
        async with ModelClient() as client:
            answers = [await client.call(handler_at(model.port), EVENT, 5) for _ in range(30)]
            together = await asyncio.gather(
                *(client.call(handler_at(model.port), EVENT, 5) for _ in range(30))
            )
    assert [a.outcome for a in [*answers, *together]] == [Outcome.OK] * 60
    assert model.count == 60


async def test_an_answer_whose_headers_never_end_is_cut_off_and_retried() -> None:
    with RawModel("headers") as model:
        async with ModelClient() as client:
            answer = await client.call(handler_at(model.port), EVENT, 5)
    assert answer.outcome is Outcome.RETRY and not answer.timed_out
    assert answer.error == "the model's answer headers are over 65536 B"


async def test_a_header_with_a_line_break_is_not_sent() -> None:
    with ModelServer() as server:
        async with ModelClient() as client:
            headers = {"traceparent": "00-1\r\nX-Injected: 1"}
            answer = await client.call(handler_at(server.port), EVENT, 5, headers)
            plain = await client.call(handler_at(server.port), EVENT, 5, {"traceparent": "00-1"})
    assert answer.outcome is Outcome.RETRY
    assert answer.error == "a request header holds a line break: not sent"
    assert plain.outcome is Outcome.OK and server.count == 1


async def test_a_cancelled_call_leaves_the_client_usable() -> None:
    with RawModel("silent") as model:
        async with ModelClient() as client:
            call = asyncio.create_task(client.call(handler_at(model.port), EVENT, 30))
            await wait_until_async(lambda: model.count == 1, what="the model got the call")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            model.healed.set()
            healed = await client.call(handler_at(model.port), EVENT, 5)
    assert healed.outcome is Outcome.OK and orjson.loads(healed.body)["id"] == "e1"


async def test_a_proxy_in_the_environment_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = free_port()
    for name in ("http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{nobody}")
    with ModelServer() as server:
        async with ModelClient() as client:
            answer = await client.call(handler_at(server.port), EVENT, 5)
    assert answer.outcome is Outcome.OK and server.count == 1


async def test_calls_end_with_an_answer_when_the_client_closes() -> None:
    with RawModel("silent") as model:
        client = ModelClient()
        await client.__aenter__()
        call = asyncio.create_task(client.call(handler_at(model.port), EVENT, 30))
        await wait_until_async(lambda: model.count == 1, what="the model got the call")
        await client.__aexit__(None, None, None)
        answer = await asyncio.wait_for(call, 5)
    assert answer.outcome is Outcome.RETRY and answer.error == "the model client was closed"


async def test_a_call_whose_answer_cannot_be_read_ends_and_later_calls_go_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        async with ModelClient() as client:
            # A bug while an answer is read must end the call, not leave it waiting.
            monkeypatch.setattr(_Connection, "on_body", broken_callback)
            failed = await asyncio.wait_for(client.call(handler_at(server.port), EVENT, 30), 5)
            monkeypatch.undo()
            after = await client.call(handler_at(server.port), EVENT, 5)
    assert failed.outcome is Outcome.RETRY
    assert failed.error.startswith("the answer could not be read: RuntimeError(")
    assert "reading an answer failed" in caplog.text
    assert after.outcome is Outcome.OK


def broken_callback(*_args: object) -> None:
    raise RuntimeError("a bug in a parser callback")
