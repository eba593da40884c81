"""`logistik demo`: everything on embedded defaults, with real models trained at start.

A Tansu broker, a SQLite store in a temporary directory, and three scikit-learn classifiers
of handwritten digits (the data set ships inside scikit-learn), each served over HTTP: a
`model`, a better `canary` taking 20 % of the events, and a `decoy` shadowing both. A
steady stream of digits goes to the `digits` topic; the web UI shows what every model does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from logistik.commands.console import EXIT_ERROR, fail, until_signal
from logistik.config import Config
from logistik.errors import LogistikError
from logistik.kafka import EmbeddedBroker, EventProducer, embedded_session, free_port
from logistik.observe.logs import EVENTS_LOGGER, setup_logging

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger("logistik.demo")

TOPIC = "digits"
RESULTS = "digits-predictions"
SUMMARY_EVERY_S = 10.0


@dataclass
class DemoModel:
    """A trained classifier and how it is registered."""

    name: str
    model_type: str
    version: str
    predict: Callable[[list[float]], int]
    accuracy: float
    traffic: float = 0.0
    port: int = 0


def train_models() -> tuple[list[DemoModel], list[tuple[list[float], int]]]:
    """Train three classifiers on half of the digits; the other half becomes the event stream."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.naive_bayes import GaussianNB
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.svm import SVC
    except ImportError:
        raise LogistikError(
            "logistik demo needs scikit-learn: pip install 'logistik[demo]'"
        ) from None
    digits = load_digits()
    half = len(digits.data) // 2
    train_x, train_y = digits.data[:half], digits.target[:half]
    test_x, test_y = digits.data[half:], digits.target[half:]
    specs = [
        ("digits-nb", "model", "1.0", GaussianNB(), 0.0),
        ("digits-svm", "canary", "2.0", SVC(gamma=0.001), 0.2),
        ("digits-knn", "decoy", "0.9", KNeighborsClassifier(3), 0.0),
    ]
    models = []
    for name, kind, version, estimator, traffic in specs:
        estimator.fit(train_x, train_y)
        accuracy = float(estimator.score(test_x, test_y))

        def predict(pixels: list[float], estimator: Any = estimator) -> int:
            return int(estimator.predict([pixels])[0])

        models.append(DemoModel(name, kind, version, predict, accuracy, traffic))
    samples = [([float(v) for v in x], int(y)) for x, y in zip(test_x, test_y, strict=True)]
    return models, samples


async def serve_model(model: DemoModel) -> web.AppRunner:
    """Serve one classifier over HTTP: POST /predict, GET /info."""
    # aiohttp's server is imported only when the demo runs: every command loads this module.
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())
        pixels = (event.get("object") or {}).get("content")
        if not isinstance(pixels, list) or len(pixels) != 64:
            return web.json_response({"error": "object.content must be 64 pixels"}, status=400)
        # Only what the answer means: decoys are compared with production on the whole body.
        return web.json_response({"id": event["id"], "label": model.predict(pixels)})

    async def info(_request: web.Request) -> web.Response:
        return web.json_response({"event": TOPIC, "path": "/predict", "return_to": RESULTS})

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/info", info)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    model.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", model.port).start()
    return runner


def demo_config(
    broker: str, workdir: Path, models: list[DemoModel], web_port: int, token: str
) -> Config:
    """The config the demo runs logistik with: its UI takes the token made at start."""
    handlers = [
        {
            "name": m.name,
            "service_id": m.name,
            "group_id": "digits",
            "event": TOPIC,
            "endpoint": "127.0.0.1",
            "hostname": "demo",
            "port": m.port,
            "path": "/predict",
            "version": m.version,
            "model_type": m.model_type,
            "traffic": m.traffic,
            "return_to": RESULTS if m.model_type != "decoy" else None,
        }
        for m in models
    ]
    config = Config.model_validate(
        {
            "kafka": {
                "bootstrap_servers": broker,
                "group_id": "logistik-demo",
                "partitions": 3,
            },
            "database": {"url": f"sqlite:///{workdir / 'logistik.db'}"},
            "discovery": {"handlers": handlers, "refresh_s": 1.0},
            "web": {"host": "127.0.0.1", "port": web_port, "auth": {"tokens": [token]}},
        }
    )
    return config.model_copy(update={"kafka": embedded_session(config.kafka)})


async def stream(
    producer: EventProducer,
    samples: list[tuple[list[float], int]],
    rate: float,
    stop: asyncio.Event,
) -> None:
    """Produce digits as events, `rate` per second, until stopped."""
    index = 0
    while not stop.is_set():
        pixels, truth = samples[index % len(samples)]
        event = {
            "verb": "classify",
            "actor": {"id": f"user-{index % 7}"},
            "provider": {"id": "demo"},
            "object": {
                "id": f"digit-{index}",
                "objectType": "image",
                "content": pixels,
                "summary": f"a handwritten {truth}",
            },
        }
        await producer.send(TOPIC, orjson.dumps(event))
        index += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), random.expovariate(rate))


async def run_demo(stop: asyncio.Event, web_port: int, rate: float, broker: EmbeddedBroker) -> None:
    """Train, serve, route and stream until stopped; everything started is stopped again."""
    from logistik.process import Runner

    logging.getLogger(EVENTS_LOGGER).setLevel(logging.WARNING)  # summaries instead
    models, samples = await asyncio.to_thread(train_models)
    for model in models:
        logger.info(
            "trained %s (%s, accuracy %.1f%% on held-out digits)",
            model.name,
            model.model_type,
            model.accuracy * 100,
        )
    servers = [await serve_model(m) for m in models]
    with tempfile.TemporaryDirectory(prefix="logistik-demo-") as workdir:
        token = secrets.token_urlsafe(18)
        config = demo_config(broker.bootstrap_servers, Path(workdir), models, web_port, token)
        runner = Runner(config)
        routing = asyncio.create_task(runner.run(stop), name="router")
        producer = EventProducer(config.kafka)
        producer.start()
        ui = f"http://127.0.0.1:{web_port}/"
        print(
            f"logistik demo: web UI on {ui} ; broker {broker.bootstrap_servers}; answers on "
            f"topic {RESULTS}.\n"
            f"logistik demo: to promote the canary or query a model, log in with this link "
            f"(valid until the demo stops): {ui}#login={token}\n"
            f"logistik demo: Ctrl-C stops.",
            flush=True,
        )
        feeder = asyncio.create_task(stream(producer, samples, rate, stop), name="stream")
        summary = asyncio.create_task(_summaries(runner, stop), name="summary")
        try:
            await routing
        finally:
            stop.set()
            await asyncio.gather(feeder, summary, return_exceptions=True)
            await producer.flush(5.0)
            producer.close()
            for server in servers:
                await server.cleanup()


async def _summaries(runner: Any, stop: asyncio.Event) -> None:
    """Print what each model did, every few seconds."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUMMARY_EVERY_S)
        if runner.store is None:
            continue
        print("demo: " + "; ".join(await summary(runner.store, runner.figures)), flush=True)


async def summary(store: Any, figures: Any) -> list[str]:
    """One phrase per model: answers, canary share, decoy agreement."""
    records = await store.records()
    answered = {
        r.node_id: figures.handlers[r.node_id].answers.get("ok", 0)
        for r in records
        if figures and r.node_id in figures.handlers
    }
    published = sum(n for node, n in answered.items() if "-decoy-" not in node) or 1
    phrases = []
    for record in records:
        handler, count = record.handler, answered.get(record.node_id, 0)
        if handler.model_type.value == "decoy":
            agreement = f"{record.agreement:.0%}" if record.agreement is not None else "-"
            phrases.append(
                f"{handler.name} (decoy) agrees with production {agreement} "
                f"of {record.decoy_compared}"
            )
        else:
            phrases.append(
                f"{handler.name} ({handler.model_type.value}) answered {count} "
                f"({count / published:.0%})"
            )
    return phrases


@click.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5656,
    show_default=True,
    help="Port of the web UI.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1000),
    default=10.0,
    show_default=True,
    help="Events per second in the demo stream.",
)
def demo(port: int, rate: float) -> None:
    """Run logistik on embedded defaults with three real models; Ctrl-C stops everything.

    \b
    Starts a Kafka-protocol broker, a SQLite store in a temporary directory and three
    scikit-learn digit classifiers served over HTTP (model, canary, decoy), streams digits
    to the topic `digits`, and serves the web UI. Nothing to install or set up by hand.
    \b
    Example:
      logistik demo --port 5656
    """
    setup_logging("info")
    try:
        with EmbeddedBroker() as broker:
            asyncio.run(until_signal(lambda stop: run_demo(stop, port, rate, broker)))
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
