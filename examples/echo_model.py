"""A model served over HTTP the way logistik calls it: copy this file to serve your own.

    python examples/echo_model.py [--host 127.0.0.1] [--port 5151]

It serves three routes:

    POST /v1/predict  the model contract: one event as JSON in, the answer as JSON out
    GET  /info        settings logistik may read instead of configuring them (topic, path, ...)
    GET  /health      200 while the model can answer: for load balancers and Consul checks

Only `answer` is the model (here it answers each event with its verb reversed); keep the rest.
How logistik takes each reply: 200 with JSON is published to the handler's `return_to` topic;
204 means "ignore this event"; 422 "already handled"; 400 and other 4xx fail the event for
good; 5xx (and timeouts) are retried. Only aiohttp is needed, which logistik installs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aiohttp import web

TOPIC = "events"  # the topic whose events this model answers
RETURN_TO = "events-results"  # where logistik publishes the answers
PATH = "/v1/predict"

logger = logging.getLogger("echo_model")


def answer(event: dict[str, Any]) -> dict[str, Any] | None:
    """The model: the answer to one event, or None to ignore it.

    An event looks like {"id": "…", "verb": "detect", "actor": {"id": "u1"}, "object": {…}}:
    `id` (logistik adds one when the producer did not), `verb` (what happened; always there),
    `actor` (who did it; its id keys the answer on Kafka), `object` (what it was done to).
    """
    return {"id": event["id"], "answer": event["verb"][::-1]}


async def predict(request: web.Request) -> web.Response:
    """The model contract: POST an event, get its answer."""
    try:
        event = await request.json()
    except ValueError:
        return web.json_response({"error": "the body is not JSON"}, status=400)
    if not isinstance(event, dict) or not isinstance(event.get("verb"), str):
        return web.json_response({"error": "expected an event with a verb"}, status=400)
    try:
        result = answer(event)
    except Exception:
        logger.exception("cannot answer event %s", event.get("id"))
        # A 5xx makes logistik retry the event later (then put it on the failed topic).
        return web.json_response({"error": "the model failed; try again"}, status=500)
    if result is None:
        return web.Response(status=204)
    return web.json_response(result)


async def info(_request: web.Request) -> web.Response:
    """What logistik may ask instead of configuring it (used with Consul discovery)."""
    return web.json_response({"event": TOPIC, "path": PATH, "return_to": RETURN_TO})


async def health(_request: web.Request) -> web.Response:
    """Whether the model can answer now."""
    return web.json_response({"status": "ok"})


def make_app() -> web.Application:
    """The model's web application."""
    app = web.Application()
    app.router.add_post(PATH, predict)
    app.router.add_get("/info", info)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    """Serve until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5151)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    logger.info("serving on http://%s:%d%s", args.host, args.port, PATH)
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
