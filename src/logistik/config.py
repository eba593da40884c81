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

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from logistik.errors import ConfigError
from logistik.handler import Handler

DEFAULT_PATH = "logistik.yaml"
ENV_PATH = "LK_CONFIG"
EMBEDDED = "embedded"
SQLITE_PREFIXES = ("sqlite:///", "sqlite+aiosqlite:///")

_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
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
    fetch_wait_max_ms: int = Field(default=10, ge=0)
    commit_interval_ms: int = Field(default=200, ge=0)
    create_topics: bool = True
    partitions: int = Field(default=3, ge=1)
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)


class DatabaseConfig(_Section):
    """Where the handler store lives."""

    url: str = "sqlite:///logistik.db"


class ConsulConfig(_Section):
    """The Consul agent used for discovery."""

    url: str = "http://127.0.0.1:8500"
    tag: str = "logistik"


class DiscoveryConfig(_Section):
    """Where handlers come from."""

    consul: ConsulConfig | None = None
    handlers: list[Handler] = Field(default_factory=list)
    refresh_s: float = Field(default=2.0, gt=0)  # how often the router reloads the store

    @model_validator(mode="after")
    def _routable(self) -> DiscoveryConfig:
        """Every static handler must be routable as written."""
        for index, handler in enumerate(self.handlers):
            problem = handler.problem()
            if problem:
                raise ValueError(f"handlers[{index}] ({handler.name}): {problem}")
        return self


class OidcConfig(_Section):
    """An OpenID Connect provider for the UI's login."""

    issuer: str
    client_id: str
    client_secret: str = ""
    redirect_url: str  # this logistik's /auth/callback as the provider knows it
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    allowed_users: list[str] = Field(default_factory=list)  # emails or subjects; empty: any


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


class CacheConfig(_Section):
    """The optional Redis response cache."""

    url: str = "redis://127.0.0.1:6379/0"
    ttl_s: int = Field(default=3600, ge=1)
    prefix: str = "logistik:answer:"
    timeout_s: float = Field(default=0.2, gt=0)  # a slow Redis must not slow events down
    retry_after_s: float = Field(default=10.0, ge=0)  # how long to skip the cache after an error


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
    # A call that would wait longer than this for one of the instance's free slots goes to the
    # retry topic instead, so a slow model cannot hold the events of other models.
    max_queue_wait_s: float = Field(default=1.0, gt=0)
    max_waiting_retries: int = Field(default=2_000, ge=1)  # retry records held until due
    # An event no instance could take (circuits open, or busy) waits on the retry topic
    # without using its retries, for at most this long; then it goes to the failed topic.
    max_hold_s: float = Field(default=600.0, gt=0)
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


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
    """Replace `$VAR`, `${VAR}` and `${VAR:-default}` in every string of a YAML tree."""
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
        name = match.group("braced") or match.group("bare")
        if name in env:
            return env[name]
        if match.group("default") is not None:
            return match.group("default")
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
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return resolve_paths(parse_config(text, str(path), env), path.parent)


def resolve_paths(config: Config, folder: Path) -> Config:
    """The config with a relative SQLite path taken from `folder` (the config file's), so that
    every command run from anywhere opens the same store."""
    url = config.database.url
    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return config
    prefix = url[: url.index(":///") + len(":///")]
    database = config.database.model_copy(update={"url": prefix + str((folder / path).resolve())})
    return config.model_copy(update={"database": database})


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL, None for any other database (or an in-memory one)."""
    for prefix in SQLITE_PREFIXES:
        if url.startswith(prefix):
            rest = url.removeprefix(prefix)
            return Path(rest) if rest and not rest.startswith(":memory:") else None
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
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        expanded = expand_env(raw, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc, source)) from None


def describe_validation(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the key and the file."""
    lines = []
    for error in exc.errors():
        key = _dotted(error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'{_did_you_mean(error['loc'])}")
        elif error["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(
                f"{source}: {key}: {message} (got {error.get('input')!r})"
                if error["type"] != "value_error"
                else f"{source}: {key}: {message}"
            )
    return "\n".join(lines)


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
