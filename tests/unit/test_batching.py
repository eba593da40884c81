"""Micro-batching: how a batch's answer is read item by item, and how calls are gathered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from logistik.answer import Answer, Outcome
from logistik.handler import Handler
from logistik.routing.batching import Batcher
from logistik.routing.model_client import ModelClient, classify_batch
from tests.support.harness import handler as handler_fields
from tests.support.models import ModelServer, Reply

LIMIT = 1024


def batching(port: int = 1, size: int = 4, wait_ms: float = 20.0) -> Handler:
    fields = handler_fields("m", "detect", port, batch_max_size=size, batch_max_wait_ms=wait_ms)
    return Handler.model_validate(fields)


def items(payload: bytes, count: int, status: int = 200) -> list[Answer]:
    return classify_batch(status, payload, None, 0.01, count, LIMIT)


def test_each_item_answers_its_own_event_with_the_models_own_bytes() -> None:
    payload = b'[{"label": 1.10}, null, {"logistik": {"status": 422}}, "text"]'
    found = items(payload, 4)
    assert [a.outcome for a in found] == [
        Outcome.OK,
        Outcome.IGNORED,
        Outcome.DUPLICATE,
        Outcome.OK,
    ]
    assert found[0].body == b'{"label": 1.10}'  # not re-encoded: 1.10 stays 1.10
    assert found[3].body == b'"text"'


def test_an_item_says_rejected_or_retry_with_its_reason_and_wait() -> None:
    payload = orjson.dumps(
        [
            {"logistik": {"status": 400, "error": "no face in the picture"}},
            {"logistik": {"status": 503, "error": "warming up", "retry_after_s": 2}},
            {"logistik": {"status": 204}},
            {"logistik": {"status": 200}},
        ]
    )
    rejected, retry, ignored, empty = items(payload, 4)
    assert (rejected.outcome, rejected.status) == (Outcome.REJECTED, 400)
    assert rejected.error == "HTTP 400: no face in the picture"
    assert (retry.outcome, retry.error, retry.retry_after_s) == (
        Outcome.RETRY,
        "HTTP 503: warming up",
        2.0,
    )
    assert ignored.outcome is Outcome.IGNORED and empty.outcome is Outcome.IGNORED


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"logistik": {"status": "bad"}}, "logistik.status is not an HTTP status"),
        ({"logistik": {"status": True}}, "logistik.status is not an HTTP status"),
        ({"logistik": {"status": 999}}, "logistik.status is 999"),
    ],
)
def test_an_envelope_without_a_status_is_retried_with_a_reason(item: Any, error: str) -> None:
    [answer] = items(orjson.dumps([item]), 1)
    assert answer.outcome is Outcome.RETRY and error in answer.error


def test_an_answer_that_merely_holds_a_logistik_key_is_published() -> None:
    payload = b'[{"logistik": {"status": 400}, "label": "cat"}, {"logistik": "x"}]'
    found = items(payload, 2)
    assert [a.outcome for a in found] == [Outcome.OK, Outcome.OK]
    assert found[1].body == b'{"logistik": "x"}'


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"[1, 2]", "HTTP 200 with 2 item(s) for a batch of 3 event(s)"),
        (b'{"id": 1}', "HTTP 200 with a body that is not a JSON list: not a JSON list"),
        (b"[1, 2, 3", "HTTP 200 with a body that is not a JSON list"),
        (b"[" * 100_000 + b"]" * 100_000, "HTTP 200 with a body that is not a JSON list"),
    ],
)
def test_a_list_of_the_wrong_shape_retries_every_event(payload: bytes, error: str) -> None:
    found = items(payload, 3)
    assert len(found) == 3
    assert all(a.outcome is Outcome.RETRY and a.error.startswith(error) for a in found)


def test_the_status_of_the_request_speaks_for_every_event() -> None:
    busy = items(b"busy", 3, status=503)
    assert [a.outcome for a in busy] == [Outcome.RETRY] * 3
    # One request, one failure for the instance's circuit and alerts.
    assert [a.counts for a in busy] == [True, False, False]
    assert [a.outcome for a in items(b"", 2, status=204)] == [Outcome.IGNORED] * 2
    assert [a.outcome for a in items(b"bad", 2, status=400)] == [Outcome.REJECTED] * 2
    assert [a.outcome for a in items(b"", 2, status=200)] == [Outcome.IGNORED] * 2


def test_an_item_over_the_answer_limit_is_rejected_alone() -> None:
    big = b'"' + b"x" * LIMIT + b'"'
    over, fine = items(b"[" + big + b', "ok"]', 2)
    assert over.outcome is Outcome.REJECTED and "routing.max_answer_bytes" in over.error
    assert fine.outcome is Outcome.OK


class Recorder:
    """A batch sender that answers each body with itself and keeps every batch it got."""

    def __init__(self, fail: Exception | None = None, short: bool = False) -> None:
        self.batches: list[list[bytes]] = []
        self.sent_at: list[float] = []
        self.fail = fail
        self.short = short  # answer one item too few, as a broken sender would

    async def __call__(
        self, handler: Handler, bodies: list[bytes], timeout_s: float, headers: Any
    ) -> list[Answer]:
        self.batches.append(bodies)
        self.sent_at.append(time.monotonic())
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        answers = [Answer(Outcome.OK, 200, body=b) for b in bodies]
        return answers[1:] if self.short else answers


async def test_a_full_batch_goes_at_once_and_the_rest_after_the_wait() -> None:
    sender = Recorder()
    batcher = Batcher(sender)
    pair = batching(size=2, wait_ms=1000)
    started = time.monotonic()
    answers = await asyncio.gather(*(batcher.call(pair, b"%d" % i, 5, None) for i in range(5)))
    assert [a.body for a in answers] == [b"0", b"1", b"2", b"3", b"4"]
    assert sender.batches == [[b"0", b"1"], [b"2", b"3"], [b"4"]]
    assert sender.sent_at[1] - started < 0.5  # full: not held for the wait
    assert sender.sent_at[2] - started >= 0.99  # alone: went once the wait was over
    await batcher.close()


async def test_a_caller_gone_before_the_request_is_left_out() -> None:
    sender = Recorder()
    batcher = Batcher(sender)
    handler = batching(size=3, wait_ms=30)
    kept = asyncio.ensure_future(batcher.call(handler, b"kept", 5, None))
    gone = asyncio.ensure_future(batcher.call(handler, b"gone", 5, None))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept).body == b"kept"
    assert sender.batches == [[b"kept"]]
    await batcher.close()


async def test_a_sender_bug_reaches_every_caller_of_the_batch() -> None:
    batcher = Batcher(Recorder(fail=RuntimeError("boom")))
    handler = batching(size=2)
    results = await asyncio.gather(
        *(batcher.call(handler, b"x", 5, None) for _ in range(2)), return_exceptions=True
    )
    assert [str(r) for r in results] == ["boom", "boom"]
    await batcher.close()


async def test_a_sender_answering_too_few_fails_every_caller_instead_of_hanging() -> None:
    batcher = Batcher(Recorder(short=True))
    handler = batching(size=2)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(batcher.call(handler, b"x", 5, None) for _ in range(2)), return_exceptions=True
        ),
        5,
    )
    assert [str(r) for r in results] == ["1 answer(s) for a batch of 2"] * 2
    await batcher.close()


def labeller(seen: list[int]) -> Any:
    """A batching model: labels each event, ignores `skip` ones and refuses `bad` ones."""

    def behaviour(batch: Any, _count: int) -> Reply:
        assert isinstance(batch, list)
        seen.append(len(batch))
        answers: list[Any] = []
        for event in batch:
            if event["verb"] == "skip":
                answers.append(None)
            elif event["verb"] == "bad":
                answers.append({"logistik": {"status": 400, "error": "unreadable"}})
            else:
                answers.append({"id": event["id"], "label": "cat"})
        return Reply(200, answers)

    return behaviour


async def test_a_batch_that_cannot_be_sent_is_one_failure_shared_by_its_events() -> None:
    async with ModelClient() as client:
        handler = batching(port=9, size=3, wait_ms=1)  # the discard port: nothing listens
        answers = await asyncio.gather(*(client.call(handler, b"{}", 5) for _ in range(3)))
    assert all(a.outcome is Outcome.RETRY and "cannot connect" in a.error for a in answers)
    assert [a.counts for a in answers] == [True, False, False]


async def test_a_batching_model_gets_one_request_for_several_events() -> None:
    seen: list[int] = []
    verbs = ["detect", "skip", "bad", "detect", "detect"]
    with ModelServer(labeller(seen)) as server:
        async with ModelClient() as client:
            handler = batching(server.port, size=4, wait_ms=30)
            answers = await asyncio.gather(
                *(
                    client.call(handler, orjson.dumps({"id": f"e{i}", "verb": verb}), 5)
                    for i, verb in enumerate(verbs)
                )
            )
    assert seen == [4, 1]
    assert [a.outcome for a in answers] == [
        Outcome.OK,
        Outcome.IGNORED,
        Outcome.REJECTED,
        Outcome.OK,
        Outcome.OK,
    ]
    assert orjson.loads(answers[4].body) == {"id": "e4", "label": "cat"}
    assert answers[2].error == "HTTP 400: unreadable"
