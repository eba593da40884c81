"""One event through one model, end to end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer


def test_answer_is_published(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("detect")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    router(make_config(servers, [handler("face", topic, model.port, version="1.2")]))
    sent = event(actor="alice")
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [sent])
        [record] = reader.wait_for(f"{topic}-results", 1)
    assert record.json() == {"id": sent["id"], "verb": "detect", "answer": "ok"}
    assert record.key == b"alice"
    assert record.headers["logistik.event_id"] == sent["id"]
    assert record.headers["logistik.node_id"] == "face-127.0.0.1-model-0"
    assert record.headers["logistik.version"] == "1.2"
