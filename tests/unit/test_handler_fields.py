"""Every field of a handler is bounded and shaped before it reaches the store, a URL or Kafka."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from logistik.handler import Handler

BASE = {"name": "face", "event": "detect", "endpoint": "10.0.0.5", "port": 5151, "return_to": "r"}


def problems(**fields: Any) -> dict[str, str]:
    """The fields refused, each with its message."""
    with pytest.raises(ValidationError) as caught:
        Handler.model_validate({**BASE, **fields})
    return {
        ".".join(str(p) for p in e["loc"]) or "(handler)": str(e["msg"]).removeprefix(
            "Value error, "
        )
        for e in caught.value.errors()
    }


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.2:9/x#", "h/x", "host name", "http://h", "a@b", "", "1.2.3", "x" * 254]
)
def test_an_endpoint_is_a_host_name_or_an_ip_address_and_nothing_else(endpoint: str) -> None:
    assert "endpoint" in problems(endpoint=endpoint)


@pytest.mark.parametrize("endpoint", ["10.0.0.5", "gpu-1", "model.example.com", "my_box", "::1"])
def test_host_names_and_addresses_are_taken(endpoint: str) -> None:
    handler = Handler.model_validate({**BASE, "endpoint": endpoint})
    assert handler.endpoint == endpoint


def test_an_ipv6_endpoint_is_bracketed_in_the_url() -> None:
    handler = Handler.model_validate({**BASE, "endpoint": "[::1]", "path": "/v1/detect"})
    assert (handler.endpoint, handler.url) == ("::1", "http://[::1]:5151/v1/detect")


@pytest.mark.parametrize("method", ["GET /x", "CONNECT", "", "POST\r\nX-A: b", 5])
def test_a_method_is_one_a_model_can_take(method: object) -> None:
    assert problems(method=method) == {"method": "must be one of GET, POST, PUT, PATCH, DELETE"}


def test_a_method_in_lower_case_is_taken() -> None:
    assert Handler.model_validate({**BASE, "method": "put"}).method == "PUT"


@pytest.mark.parametrize("path", ["predict", "/a b", "/x#frag", "/a\\b", "/\x00", "/" + "p" * 1024])
def test_a_path_is_a_path(path: str) -> None:
    assert "path" in problems(path=path)


@pytest.mark.parametrize("port", [0, 65536, "abc", -1])
def test_a_port_is_a_port(port: object) -> None:
    assert "port" in problems(port=port)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hostname", "a/b"),
        ("hostname", "h" * 1_000_000),
        ("node", "1/2"),
        ("node", "n" * 65),
        ("service_id", "face/v2"),
        ("service_id", "face v2"),
    ],
)
def test_identity_fields_hold_no_slash_and_are_bounded(field: str, value: str) -> None:
    refused = problems(**{field: value})
    assert field in refused
    assert len(" ".join(refused.values())) < 300  # the value is never echoed whole


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event", "a b"),
        ("event", "t" * 250),
        ("event", ".."),
        ("return_to", "results/x"),
        ("failed_topic", "x" * 250),
        ("version", "v" * 256),
        ("group_id", "g\nh"),
        ("environment", "e" * 256),
        ("timeout", 86400),
        ("retries", 1000),
        ("batch_max_size", 0),
        ("batch_max_size", 1025),
        ("batch_max_size", "many"),
        ("batch_max_wait_ms", -1),
        ("batch_max_wait_ms", 60_000),
        ("tags", [f"t{i}" for i in range(65)]),
        ("tags", ["x" * 256]),
    ],
)
def test_every_other_field_is_bounded(field: str, value: object) -> None:
    assert field in problems(**{field: value})


def test_batching_fields_from_tags_are_numbers_with_a_default_wait() -> None:
    batching = Handler.model_validate({**BASE, "batch_max_size": "32"})
    assert (batching.batch_size, batching.batch_wait_s) == (32, 0.005)
    single = Handler.model_validate(BASE)
    assert (single.batch_size, single.batch_max_size) == (1, None)


def test_an_event_that_leaves_no_room_for_its_failed_topic_is_refused() -> None:
    assert "failed topic" in problems(event="e" * 245)["(handler)"]
    Handler.model_validate({**BASE, "event": "e" * 245, "failed_topic": "short-failed"})


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"return_to": "detect"}, "return_to is the topic it handles (detect)"),
        ({"failed_topic": "detect"}, "failed_topic is the topic it handles (detect)"),
        ({"event": ""}, "no event"),
        ({"return_to": ""}, "return_to is required"),
    ],
)
def test_a_handler_that_would_loop_or_has_no_topic_is_never_routable(
    fields: dict[str, Any], words: str
) -> None:
    handler = Handler.model_validate({**BASE, **fields})
    assert words in (handler.problem() or "")
    assert not handler.active
