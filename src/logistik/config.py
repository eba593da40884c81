"""Reads and validates the YAML config file, with `$VAR` and `${VAR}` taken from the environment."""

from __future__ import annotations

import difflib
import importlib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from logistik.errors import ConfigError, one_line
from logistik.handler import Handler, ModelType, is_host

DEFAULT_PATH = "logistik.yaml"
ENV_PATH = "LK_CONFIG"
EMBEDDED = "embedded"
SQLITE_PREFIXES = ("sqlite:///", "sqlite+aiosqlite:///")

_SECRET_PARAM = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|token|sslpassword|api_key)=)[^&;#]*", re.IGNORECASE
)
_VAR = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# Keys whose values are secrets, or URLs that may carry one: never echoed in messages.
SECRET_KEYS = frozenset({"tokens", "users", "session_secret", "client_secret", "url"})
SECRET_WORDS = ("password", "secret", "token")  # e.g. librdkafka's sasl.password
UNION_TAGS = frozenset({"str", "int", "float", "bool"})
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DATABASE_DRIVERS = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgres", "postgresql+asyncpg")
SECRET_MIN = 6  # shorter values are masked nowhere: they would blank out ordinary words
_BOOTSTRAP_ENTRY = re.compile(
    r"(?:[A-Za-z_]+://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>\d+))?"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    """How logistik reaches Kafka; `bootstrap_servers: embedded` starts a local Tansu broker."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "logistik"
    embedded_port: int = Field(default=9092, ge=1, le=65535)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    # Static membership: a process that comes back under the same id takes its partitions back
    # at once, without a rebalance; "{hostname}" is replaced by the host's name. Empty: off.
    group_instance_id: str = ""
    fetch_wait_max_ms: int = Field(default=10, ge=0)
    # A partition whose broker holds records past the consumer's position, none of which a
    # fetch has brought for this long, is reported (log, /readyz, UI): an open transaction,
    # or a broker that stopped serving fetches, holds it.
    fetch_stalled_after_s: float = Field(default=60.0, ge=1.0)
    commit_interval_ms: int = Field(default=200, ge=0)
    create_topics: bool = True
    partitions: int = Field(default=3, ge=1)
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        """`embedded`, or host:port entries separated by commas."""
        if value == EMBEDDED:
            return value
        for entry in value.split(","):
            match = _BOOTSTRAP_ENTRY.fullmatch(entry.strip())
            port = int(match["port"]) if match and match["port"] else 9092
            if match is None or not is_host(match["host"].strip("[]")) or not 0 < port < 65536:
                raise ValueError(
                    f"{one_line(entry, 80)!r} is not host:port "
                    "(give host:port[,host:port...], or embedded)"
                )
        return value


class DatabaseConfig(_Section):
    """Where the handler store lives."""

    url: str = "sqlite:///logistik.db"

    @field_validator("url")
    @classmethod
    def _database(cls, value: str) -> str:
        """A SQLite or PostgreSQL URL SQLAlchemy can read (never echoed: it holds a password)."""
        try:
            url = make_url(value)
            _ = url.port
        except (ArgumentError, ValueError):
            url = None
        if url is None or url.drivername not in DATABASE_DRIVERS:
            raise ValueError(
                "not a database URL: give sqlite:///FILE or postgresql://user:password@host/db"
            )
        return value


class ConsulConfig(_Section):
    """The Consul agent used for discovery."""

    url: str = "http://127.0.0.1:8500"
    tag: str = "logistik"

    @field_validator("url")
    @classmethod
    def _agent(cls, value: str) -> str:
        """The agent's http(s) URL."""
        return http_url(value)


class DiscoveryConfig(_Section):
    """Where handlers come from."""

    consul: ConsulConfig | None = None
    handlers: list[Handler] = Field(default_factory=list)
    refresh_s: float = Field(default=2.0, gt=0)  # how often the router reloads the store

    @model_validator(mode="after")
    def _routable(self) -> DiscoveryConfig:
        """Every static handler must be routable as written, under a node id of its own."""
        seen: dict[str, int] = {}
        for index, handler in enumerate(self.handlers):
            problem = handler.problem()
            if problem:
                raise ValueError(f"handlers[{index}] ({handler.name}): {problem}")
            first = seen.setdefault(handler.node_id, index)
            if first != index:
                raise ValueError(
                    f"handlers[{index}] ({handler.name}): node id {handler.node_id} is also "
                    f"handlers[{first}]'s; give each instance its own node (or hostname)"
                )
        return self


class OidcConfig(_Section):
    """An OpenID Connect provider for the UI's login."""

    issuer: str
    client_id: str
    client_secret: str = ""
    redirect_url: str  # this logistik's /auth/callback as the provider knows it
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    allowed_users: list[str] = Field(default_factory=list)  # emails or subjects; empty: any

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        """https, or plain http only to a provider on this machine."""
        if not is_secure_url(http_url(value)):
            raise ValueError(
                "must be an https:// URL (plain http only on loopback: logins and the client "
                "secret would cross the network in clear)"
            )
        return value


class WebAuthConfig(_Section):
    """Who may read and who may change state through the API and UI."""

    read: Literal["open", "protected"] = "open"
    tokens: list[str] = Field(default_factory=list)  # bearer tokens for scripts
    users: dict[str, str] = Field(default_factory=dict)  # name -> password hash (pbkdf2)
    session_secret: str = ""  # signs UI sessions; a random one per start when empty
    session_max_age_s: int = Field(default=8 * 3600, ge=60)
    oidc: OidcConfig | None = None


class WebConfig(_Section):
    """The REST API and web UI."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=5656, ge=1, le=65535)
    auth: WebAuthConfig = Field(default_factory=WebAuthConfig)
    query_timeout_s: float = Field(default=10.0, gt=0)  # the query page's call to a model
    query_max_bytes: int = Field(default=1_000_000, ge=1)


class WebhookConfig(_Section):
    """Where alerts go (Slack/Mattermost-compatible incoming webhook)."""

    url: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    interval_s: float = Field(default=60.0, ge=0)  # at most one alert per model per interval
    format: Literal["mattermost", "slack", "template"] = "mattermost"
    # With format "template": a JSON body with $title, $status, $text, $table, $group, $topic,
    # $failed_events, $error and $at (each already escaped for a JSON string).
    template: str | None = None
    failing_after: int = Field(default=5, ge=1)  # failed calls in a row that make a model critical

    @field_validator("url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        """The webhook's http(s) URL (never echoed: its path is the secret)."""
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _template(self) -> WebhookConfig:
        """A template format needs its template."""
        if self.format == "template" and not self.template:
            raise ValueError("format is template but no template is given (webhook.template)")
        return self


class CacheConfig(_Section):
    """The optional Redis response cache."""

    url: str = "redis://127.0.0.1:6379/0"
    ttl_s: int = Field(default=3600, ge=1)
    prefix: str = "logistik:answer:"
    timeout_s: float = Field(default=0.2, gt=0)  # a slow Redis must not slow events down
    retry_after_s: float = Field(default=10.0, ge=0)  # how long to skip the cache after an error

    @field_validator("url")
    @classmethod
    def _redis(cls, value: str) -> str:
        """A Redis URL (never echoed: it may hold a password)."""
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a Redis URL: give redis://host:port/db (or rediss://, unix://)")
        return value


class StatsdConfig(_Section):
    """Optional statsd timings of model calls."""

    host: str = "127.0.0.1"
    port: int = Field(default=8125, ge=1, le=65535)
    prefix: str = "logistik"


class TracingConfig(_Section):
    """OpenTelemetry tracing (needs the `tracing` extra)."""

    enabled: bool = False
    # "global": spans go to the tracer provider the environment set up (e.g. by
    # opentelemetry-instrument and OTEL_* variables); "console": printed to stdout.
    exporter: Literal["global", "console"] = "global"
    service_name: str = "logistik"


class RoutingConfig(_Section):
    """Limits and retry policy of the router; handlers may override timeout and retries."""

    max_in_flight: int = Field(default=2_000, ge=1)
    max_concurrency_per_handler: int = Field(default=64, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_cap_s: float = Field(default=30.0, ge=0)
    retry_after_cap_s: float = Field(default=300.0, ge=0)
    # Failed calls in a row that open an instance's circuit, and how long it then gets no
    # calls (doubling at each failed probe, up to circuit_open_max_s).
    unhealthy_after_failures: int = Field(default=3, ge=1)
    unhealthy_cooldown_s: float = Field(default=10.0, ge=0)
    circuit_open_max_s: float = Field(default=120.0, ge=0)
    # While the in-flight budget is full and a model that was answering sits idle for want of
    # it, a call does not queue for one of the instance's slots behind calls that waited longer
    # than this: they go to the retry topic instead, so that a slow model cannot hold the
    # events of other models. When every model is busy, queues are waited in (up to half a
    # call's timeout): the retry topic would only add work to a router that has too much.
    max_queue_wait_s: float = Field(default=2.0, gt=0)
    # A model whose queued calls have not moved for this long gives them to its retry topic
    # at once, from three quarters of the budget on, while another model answers or sits
    # idle: a model that stalls must not hold the others.
    stalled_after_s: float = Field(default=0.25, gt=0)
    # Events of a group's retry topic held at once (a bundle counts as its events), waiting for
    # their due time or a slot; while the group is shed, two per slot of its instances.
    max_waiting_retries: int = Field(default=2_000, ge=1)
    # An event no instance could take (circuits open, or busy) waits on the retry topic
    # without using its retries, for at most this long; then it goes to the failed topic.
    max_hold_s: float = Field(default=600.0, gt=0)
    # A model's answer body larger than this is not read: its event goes to the failed topic
    # (`rejected`). Kafka's default record limit is about 1 MB, so a larger answer could not be
    # published without raising the return topic's limit; this keeps each call's memory bounded.
    max_answer_bytes: int = Field(default=1024 * 1024, ge=1)
    shutdown_grace_s: float = Field(default=30.0, ge=0)


class Config(_Section):
    """The whole config file."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    cache: CacheConfig | None = None
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    statsd: StatsdConfig | None = None
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # Routers started by `logistik run` on this host, in one consumer group (`--workers`).
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The per-event lines (logger logistik.events): failures at warning, answers and retries at
    # info. At thousands of events a second a line each cost about a sixth of the router's CPU.
    event_log_level: Literal["debug", "info", "warning", "error"] = "warning"
    log_format: Literal["text", "json"] = "text"
    _source: str = PrivateAttr(default="the config")  # the file, for messages

    def warnings(self) -> list[str]:
        """What runs, but likely not as meant: one line each, naming the file and the key."""
        handlers = self.discovery.handlers
        production = {
            (h.event, h.group_id)
            for h in handlers
            if h.model_type == ModelType.MODEL and h.enabled and not h.retired
        }
        return [
            f"{self._source}: discovery.handlers[{index}] ({h.name}): a canary without a "
            f"production handler of group {h.group_id} in this file answers every event of "
            f"{h.event}, whatever its traffic share"
            for index, h in enumerate(handlers)
            if h.model_type == ModelType.CANARY and (h.event, h.group_id) not in production
        ]

    def secrets(self) -> list[str]:
        """Every secret the config holds (tokens, hashes, keys, passwords in URLs), for masking."""
        auth = self.web.auth
        found = [*auth.tokens, *auth.users.values(), auth.session_secret]
        if auth.oidc is not None:
            found.append(auth.oidc.client_secret)
        if self.webhook.url:
            path = urlsplit(self.webhook.url).path
            found += [self.webhook.url, *([path] if len(path) >= SECRET_MIN else [])]
        found += url_secrets(self.database.url)
        if self.cache is not None:
            found += url_secrets(self.cache.url)
        for settings in (self.kafka.consumer, self.kafka.producer):
            found += [str(v) for k, v in settings.items() if is_secret_key(k)]
        return sorted({s for s in found if len(s) >= SECRET_MIN}, key=len, reverse=True)


def is_secret_key(key: str | int) -> bool:
    """Whether a config key holds a secret (or a URL that may hold one)."""
    text = str(key).split("[")[0]
    return text in SECRET_KEYS or any(word in text.lower() for word in SECRET_WORDS)


def http_url(value: str) -> str:
    """Check that a value is an http(s) URL with a host; ValueError (never echoing it) if not."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// or https:// URL with a host")
    return value


def is_secure_url(url: str) -> bool:
    """Whether a URL is https, or http on loopback (a service on this machine)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK)


def url_secrets(url: str) -> list[str]:
    """The password of a URL (`user:password@`, `?password=`), as written and decoded."""
    masked = masked_url(url)
    if masked == url:
        return []
    found = []
    _, _, rest = url.partition("://")
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    credentials, at, _ = head.rpartition("@")
    if at and ":" in credentials:
        found.append(credentials.partition(":")[2])
    found += [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(url)]
    return [form for secret in found for form in {secret, unquote(secret)} if form]


def masked_url(url: str) -> str:
    """A URL with its password (`user:password@`, `?password=`) replaced by ***, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAM.sub(r"\1***", url)
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    head, tail = rest[: min(ends, default=len(rest))], rest[min(ends, default=len(rest)) :]
    # Up to the last '@' before the query: SQLAlchemy takes '/' in a password as it is.
    credentials, at, host = head.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if at and colon:
        head = f"{user}:***@{host}"
    return f"{scheme}://{head}" + _SECRET_PARAM.sub(r"\1***", tail)


def require_extra(module: str, extra: str, section: str) -> ModuleType:
    """Import what an optional part needs; a ConfigError naming the extra when it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{section}: needs the '{extra}' extra, which is not installed "
            f"(pip install 'logistik[{extra}]')"
        ) from None


def expand_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace `$VAR`, `${VAR}` and `${VAR:-default}` in every string of a YAML tree (`$$`: `$`)."""
    if isinstance(value, str):
        return _expand_string(value, env, where)
    if isinstance(value, list):
        return [expand_env(item, env, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: expand_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    return value


def _expand_string(text: str, env: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        name = match.group("braced") or match.group("bare")
        if name in env:
            return env[name]
        if match.group("default") is not None:
            return match.group("default")
        if any(map(is_secret_key, where.split("."))):  # the name may be a piece of a secret
            raise ConfigError(
                f"{where}: a $NAME in the value names an environment variable that is not set "
                "(write $$ for a $)"
            )
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _VAR.sub(replace, text)


def config_path(given: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The file to read: the given one, else $LK_CONFIG, else logistik.yaml."""
    env = os.environ if env is None else env
    return Path(given or env.get(ENV_PATH) or DEFAULT_PATH)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file; every problem is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the config file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return resolve_paths(parse_config(text, str(path), env), path.parent)


def resolve_paths(config: Config, folder: Path) -> Config:
    """The config with a relative SQLite path taken from `folder` (the config file's), so that
    every command run from anywhere opens the same store."""
    url = config.database.url
    path = sqlite_path(url)
    if path is None or path.is_absolute() or ":///file:" in url:  # a `file:` URI stays as is
        return config
    scheme, _, rest = url.partition(":///")
    _name, query_mark, query = rest.partition("?")
    absolute = f"{scheme}:///{(folder / path).resolve()}{query_mark}{query}"
    database = config.database.model_copy(update={"url": absolute})
    return config.model_copy(update={"database": database})


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (or of its `file:` URI), None for any other database and
    for an in-memory one."""
    for prefix in SQLITE_PREFIXES:
        if url.startswith(prefix):
            name = url.removeprefix(prefix).partition("?")[0].removeprefix("file:")
            in_memory = not name or name == ":memory:" or "mode=memory" in url
            return None if in_memory else Path(name)
    return None


def parse_config(text: str, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate config text; `source` names it in error messages."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}: {problem}{at}") from None
    if raw is None:
        raise ConfigError(
            f"{source}: the config file is empty; give at least the sections that differ "
            "from the defaults (e.g. kafka.bootstrap_servers)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        expanded = expand_env(raw, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc, source)) from None
    config._source = source
    return config


def describe_validation(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the key and the file."""
    return "\n".join(f"{source}: {problem}" for problem in field_problems(exc))


def field_problems(exc: ValidationError) -> list[str]:
    """Each problem as `key: what is wrong`; values are echoed short, secrets never."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        loc = error["loc"]
        if loc and loc[-1] in UNION_TAGS:  # one error per member of a union: say it once
            loc = loc[:-1]
        key = _dotted(loc)
        if key in problems:
            continue
        if error["type"] == "extra_forbidden":
            problems[key] = f"unknown key '{key}'{_did_you_mean(loc)}"
        elif error["type"] == "missing":
            problems[key] = f"missing key '{key}'"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            secret = any(map(is_secret_key, error["loc"]))
            echo = error["type"] != "value_error" and not secret
            got = f" (got {one_line(repr(error.get('input')), 80)})" if echo else ""
            problems[key] = f"{key}: {message}{got}"
    return list(problems.values())


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or "(top level)"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """` (did you mean 'x'?)` when a known key at the same place is close to the unknown one."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if model is None:
            return ""
        if isinstance(part, str):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return ""
    known = set(model.model_fields)
    for field in model.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            known |= {c for c in field.validation_alias.choices if isinstance(c, str)}
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None
