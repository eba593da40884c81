"""`logistik init`: write a commented starter config for one broker and one model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import click

from logistik.commands.console import EXIT_CONFIG, EXIT_ERROR, fail
from logistik.config import DEFAULT_PATH, EMBEDDED, parse_config
from logistik.errors import ConfigError
from logistik.handler import Handler
from logistik.observe.reachability import probe

EXAMPLE_MODEL = "http://127.0.0.1:5151/v1/predict"

TEMPLATE = """\
# logistik's config, written by `logistik init`. README's "Configuration" lists every key;
# an unknown or wrong key stops `logistik run` with one line naming it.

kafka:
  # Your Kafka: host:port[,host:port...]. "embedded" starts a Kafka-protocol broker (Tansu)
  # on this machine at embedded_port, keeping records in memory only: for trying things out.
  bootstrap_servers: "{broker}"
  group_id: logistik              # logistik processes with one group_id share the partitions
  # TLS or SASL are librdkafka settings, for both clients, e.g.:
  # consumer: {{security.protocol: SASL_SSL, sasl.mechanisms: PLAIN,
  #            sasl.username: logistik, sasl.password: "${{KAFKA_PASSWORD}}"}}
  # producer: {{...the same...}}

database:
  # The handler store. A relative SQLite path is taken from this file's folder.
  url: "sqlite:///logistik.db"    # or postgresql://user:${{DB_PASSWORD}}@host/logistik

discovery:
  handlers:
    # One model: each event on the topic `event` goes to http://endpoint:port/path as a POST
    # with the event as JSON; what the model answers is published to `return_to`.
    - name: {name}
      event: {topic}
      endpoint: {host}
      port: {port}
      path: {path}
      return_to: {topic}-results
      # version: "1"
      # model_type: canary          # model (default), canary (with traffic: 0.1), decoy, deploy
  # consul: {{url: "http://127.0.0.1:8500"}}   # also take models registered in Consul

web:
  host: 127.0.0.1                 # the web UI and REST API; 0.0.0.0 to reach it from elsewhere
  port: 5656
  auth:
    # Changing models (promote, traffic, the query page) needs a login: set a token before
    # starting, e.g. `export LK_API_TOKEN=$(openssl rand -hex 16)`, and log in with it.
    tokens: ["${{LK_API_TOKEN:-}}"]
"""


def model_address(url: str) -> tuple[str, int, str]:
    """Host, port and path of a model's http URL; a ConfigError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--model {url}: expected http://host:port/path")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"--model {url}: the port is not a number") from None
    return parts.hostname, port, parts.path or "/"


def starter_config(broker: str, model_url: str, topic: str, name: str) -> str:
    """The text of a starter config; it is validated as `logistik run` would read it."""
    host, port, path = model_address(model_url)
    text = TEMPLATE.format(broker=broker, name=name, topic=topic, host=host, port=port, path=path)
    parse_config(text, "the starter config", {})
    return text


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH)
@click.option(
    "--broker",
    default=EMBEDDED,
    show_default=True,
    help='Kafka bootstrap servers (host:port,...), or "embedded" for a local broker.',
)
@click.option(
    "--model",
    "model_url",
    default=EXAMPLE_MODEL,
    show_default=True,
    help="The model's URL; logistik POSTs each event to it.",
)
@click.option("--topic", default="events", show_default=True, help="The topic of its events.")
@click.option("--name", default="model", show_default=True, help="The model's name.")
def init(file: Path, broker: str, model_url: str, topic: str, name: str) -> None:
    """Write a commented starter config (default logistik.yaml); never overwrites a file.

    \b
    Example:
      logistik init --broker kafka-1:9092 --model http://10.0.0.5:5151/v1/detect --topic detect
      logistik run        # reads logistik.yaml
    """
    if file.exists():
        fail(f"{file} exists: not overwritten (remove it, or name another file)", EXIT_ERROR)
    try:
        text = starter_config(broker, model_url, topic, name)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    try:
        with file.open("x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        fail(f"{file}: cannot write: {exc.strerror}", EXIT_ERROR)
    click.echo(f"wrote {file}: events on {topic} go to {model_url}, answers to {topic}-results")
    host, port, _path = model_address(model_url)
    handler = Handler(name=name, event=topic, endpoint=host, port=port)
    reach = asyncio.run(probe(handler))
    if not reach.ok:
        click.echo(
            f"logistik: warning: {reach.detail} (start the model before sending events)",
            err=True,
        )
    run = "logistik run" if str(file) == DEFAULT_PATH else f"logistik run --config {file}"
    click.echo(f"next: {run}")
