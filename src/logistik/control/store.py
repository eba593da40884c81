"""The handler store: every handler in SQL (SQLite or PostgreSQL), with admin state kept apart."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from logistik.config import describe_validation, field_problems, masked_url, require_extra
from logistik.errors import (
    HandlerNotFoundError,
    StoreError,
    StoreUnavailableError,
    describe,
    one_line,
)
from logistik.handler import Handler, ModelType

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 10.0  # a PostgreSQL host that does not answer fails in this time, not 60 s
# What a database that is down, away or read-only raises (the driver's errors come wrapped).
UNAVAILABLE = (OSError, TimeoutError, SQLAlchemyError)
# Fields discovery (or the config) owns; admin fields are never written from discovery.
DISCOVERED_FIELDS = (
    "name",
    "service_id",
    "group_id",
    "event",
    "endpoint",
    "hostname",
    "port",
    "path",
    "method",
    "version",
    "node",
    "model_type",
    "enabled",
    "traffic",
    "timeout_s",
    "retries",
    "batch_max_size",
    "batch_max_wait_ms",
    "return_to",
    "failed_topic",
    "environment",
    "tags",
    "consul_service_id",
    "startup",
)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class HandlerRow(Base):
    """One handler as stored: what discovery says, and what operators decided."""

    __tablename__ = "handlers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(255))
    service_id: Mapped[str] = mapped_column(String(255))
    group_id: Mapped[str] = mapped_column(String(255), index=True)
    event: Mapped[str] = mapped_column(String(255), index=True)
    endpoint: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024), default="/")
    method: Mapped[str] = mapped_column(String(16), default="POST")
    version: Mapped[str] = mapped_column(String(255), default="")
    node: Mapped[str] = mapped_column(String(64), default="0")
    model_type: Mapped[str] = mapped_column(String(16), default="model")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    traffic: Mapped[float] = mapped_column(Float, default=0.0)
    timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    retries: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_max_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_max_wait_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    return_to: Mapped[str | None] = mapped_column(String(255), nullable=True)
    failed_topic: Mapped[str | None] = mapped_column(String(255), nullable=True)
    environment: Mapped[str] = mapped_column(String(255), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    consul_service_id: Mapped[str] = mapped_column(String(255), default="")
    startup: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Operators' decisions: discovery never writes these.
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_by_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    admin_model_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    admin_traffic: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Bookkeeping.
    source: Mapped[str] = mapped_column(String(16), default="api")
    problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    decoy_compared: Mapped[int] = mapped_column(BigInteger, default=0)
    decoy_agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    registered: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class HandlerRecord:
    """A stored handler: the effective handler logistik routes to, and where its state came from."""

    handler: Handler
    source: str
    registered: bool
    discovered_enabled: bool
    disabled_by_admin: bool
    declared_model_type: str
    problem: str | None
    decoy_compared: int
    decoy_agreed: int
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None
    broken: bool = False  # the stored fields are not a valid handler (see `problem`)

    @property
    def node_id(self) -> str:
        """The handler's node id."""
        return self.handler.node_id

    @property
    def state(self) -> str:
        """One word: retired, disabled (by hand), gone (deregistered), invalid, down or active.

        A handler that cannot be routed as stored (no topic, no return_to, fields that are not
        valid) is invalid whatever its health: it must never reach the router, not even as down.
        """
        if self.handler.retired:
            return "retired"
        if self.disabled_by_admin:
            return "disabled"
        if not self.registered:
            return "gone"
        if self.broken or self.handler.problem() is not None:
            return "invalid"
        if not self.discovered_enabled:
            return "down"
        return "active"

    @property
    def agreement(self) -> float | None:
        """A decoy's share of answers equal to production's, when any were compared."""
        return self.decoy_agreed / self.decoy_compared if self.decoy_compared else None


@contextlib.asynccontextmanager
async def _sqlite_file_lock(database: str | None) -> AsyncIterator[None]:
    """Hold an exclusive lock on a file beside an SQLite database (none in memory)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing releases the lock


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a config URL (sqlite:/// or postgresql://)."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _now() -> datetime:
    return datetime.now(UTC)


def _effective(row: HandlerRow) -> tuple[Handler, str | None]:
    """The handler a row says, and why its fields are not valid (then it is never routed)."""
    values = {
        **{f: getattr(row, f) for f in DISCOVERED_FIELDS},
        "node_id": row.node_id,
        "model_type": row.admin_model_type or row.model_type,
        "traffic": row.admin_traffic if row.admin_traffic is not None else row.traffic,
        "enabled": row.enabled and not row.disabled_by_admin,
        "retired": row.retired,
        "tags": list(row.tags or []),
    }
    try:
        return Handler.model_validate(values), None
    except ValidationError as exc:
        # Written before a rule existed, or by hand: shown with its problem, never routed.
        problem = "stored fields are not valid: " + "; ".join(field_problems(exc))
        return Handler.model_construct(**{**values, "enabled": False}), problem


def _record(row: HandlerRow) -> HandlerRecord:
    handler, invalid = _effective(row)
    return HandlerRecord(
        handler,
        row.source,
        row.registered,
        row.enabled,
        row.disabled_by_admin,
        row.model_type,
        invalid or row.problem,
        row.decoy_compared,
        row.decoy_agreed,
        row.created_at,
        row.updated_at,
        row.last_seen_at,
        broken=invalid is not None,
    )


@contextlib.asynccontextmanager
async def _reaching(doing: str) -> AsyncIterator[None]:
    """Turn a database's own errors into one-line StoreErrors saying what could not be done."""
    try:
        yield
    except IntegrityError as exc:
        raise StoreError(f"the handler store refused to {doing}: {_first_line(exc)}") from None
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(
            f"the handler store cannot {doing}: {_first_line(exc)}"
        ) from None


class Store:
    """Async access to the handler store; `open` migrates the schema to the newest revision."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and upgrade the schema; StoreUnavailableError when the database is away."""
        driver_url = async_url(url)
        if driver_url.startswith("postgresql+asyncpg"):
            require_extra("asyncpg", "postgres", "database.url")
        try:
            engine = create_async_engine(
                driver_url,
                # A pooled connection a database restart closed is replaced, not handed out.
                pool_pre_ping=True,
                connect_args={"timeout": CONNECT_TIMEOUT_S} if "asyncpg" in driver_url else {},
            )
        except (ArgumentError, ValueError, ImportError) as exc:
            raise StoreError(
                f"database.url: not a database URL logistik can use ({describe(exc, 120)})"
            ) from None
        store = cls(engine)
        try:
            await store.migrate()
        except UNAVAILABLE as exc:
            await engine.dispose()
            raise StoreUnavailableError(
                f"cannot open the store at {masked_url(url)}: {_first_line(exc)}"
            ) from None
        return store

    async def close(self) -> None:
        """Release the connections."""
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The database, for the tables other modules keep in it (rollouts)."""
        return self._engine

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to a revision, serialised between processes."""
        # Several logistik processes may start at once against one database (the workers of
        # `run --workers N` always do): one upgrades, the others then find it done.
        database = self._engine.url.database if self._sqlite else None
        async with _sqlite_file_lock(database), self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_xact_lock(5656)"))
            await connection.run_sync(_upgrade, revision)

    @property
    def _sqlite(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    async def ping(self) -> None:
        """Run a trivial query; StoreUnavailableError when the database does not answer."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"the store does not answer: {_first_line(exc)}") from None

    async def revision(self) -> str | None:
        """The schema revision the database is at."""
        async with self._engine.connect() as connection:
            try:
                result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            except SQLAlchemyError:
                return None
            return result.scalar_one_or_none()

    async def records(self) -> list[HandlerRecord]:
        """Every stored handler, ordered by node id."""
        async with _reaching("read handlers"), self._sessions() as session:
            rows = await session.scalars(select(HandlerRow).order_by(HandlerRow.node_id))
            return [_record(row) for row in rows]

    async def handlers(self) -> list[Handler]:
        """The effective handlers, for the router."""
        return [record.handler for record in await self.records()]

    async def get(self, node_id: str) -> HandlerRecord:
        """One stored handler; HandlerNotFoundError when there is none."""
        async with _reaching("read handlers"), self._sessions() as session:
            return _record(await _row(session, node_id))

    async def sync(
        self,
        handlers: Iterable[Handler],
        source: str,
        problems: dict[str, str] | None = None,
        delete_missing: bool = False,
    ) -> int:
        """Make the store say what a source says now; returns how many rows changed.

        Handlers of the source it no longer lists are marked gone (kept, no events), or
        deleted with `delete_missing` (a static handler removed from the config file).
        `problems` (node id -> text) says what is wrong with a listed handler; a listed
        handler without one has its problem cleared. Admin state is never touched.
        """
        now = _now()
        wanted = {h.node_id: h for h in handlers}
        problems = problems or {}
        changed = 0
        async with _reaching("write handlers"), self._sessions.begin() as session:
            query = select(HandlerRow).where(HandlerRow.source == source)
            rows = {r.node_id: r for r in await session.scalars(query)}
            for node_id, handler in wanted.items():
                row = rows.get(node_id) or await _by_node_id(session, node_id)
                if row is None:
                    row = _new_row(handler, source, now)
                    session.add(row)
                    changed += 1
                else:
                    changed += _apply(row, handler, source, now)
                changed += _set(row, now, registered=True, problem=problems.get(node_id))
            for node_id, row in rows.items():
                if node_id in wanted:
                    continue
                if delete_missing:
                    await session.delete(row)
                    changed += 1
                else:
                    changed += _set(row, now, registered=False, enabled=False)
        return changed

    async def add(self, handler: Handler, source: str = "api") -> HandlerRecord:
        """Store a new handler; StoreError if its node id exists."""
        async with _reaching("add the handler"), self._sessions.begin() as session:
            if await _by_node_id(session, handler.node_id) is not None:
                raise StoreError(f"handler {handler.node_id} already exists")
            row = _new_row(handler, source, _now())
            session.add(row)
        return _record(row)

    async def edit(self, node_id: str, fields: dict[str, Any]) -> HandlerRecord:
        """Change discovered fields of a handler (validated as a whole)."""
        async with _reaching("change the handler"), self._sessions.begin() as session:
            row = await _row(session, node_id)
            current = {f: getattr(row, f) for f in DISCOVERED_FIELDS}
            if "timeout" in fields:
                fields = {**fields, "timeout_s": fields["timeout"]}
                del fields["timeout"]
            try:
                handler = Handler.model_validate({**current, **fields, "node_id": node_id})
            except ValidationError as exc:
                raise StoreError(describe_validation(exc, node_id)) from None
            problem = handler.problem()
            if problem is not None and problem != _effective(row)[0].problem():
                raise StoreError(f"{node_id}: {problem}")  # an edit never makes one unroutable
            _apply(row, handler, row.source, _now())
        return _record(row)

    async def set_admin(self, node_id: str, **state: Any) -> HandlerRecord:
        """Set admin state: retired, disabled_by_admin, admin_model_type, admin_traffic."""
        [record] = await self.set_admin_many([(node_id, state)])
        return record

    async def set_admin_many(
        self, changes: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[HandlerRecord]:
        """Set admin state of several handlers in one transaction: routers see all or none."""
        allowed = {"retired", "disabled_by_admin", "admin_model_type", "admin_traffic"}
        unknown = {key for _, state in changes for key in state} - allowed
        if unknown:
            raise ValueError(f"not admin state: {', '.join(sorted(unknown))}")
        rows = []
        async with _reaching("change handlers"), self._sessions.begin() as session:
            for node_id, state in changes:
                row = await _row(session, node_id)
                for key, value in state.items():
                    setattr(row, key, value)
                row.updated_at = _now()
                rows.append(row)
        return [_record(row) for row in rows]

    async def delete(self, node_id: str) -> None:
        """Remove a handler for good."""
        async with _reaching("delete the handler"), self._sessions.begin() as session:
            await session.delete(await _row(session, node_id))

    async def count_decoy(self, counts: dict[str, tuple[int, int]]) -> None:
        """Add (compared, agreed) counts to decoys, atomically across processes."""
        if not counts:
            return
        async with _reaching("count decoy answers"), self._sessions.begin() as session:
            for node_id, (compared, agreed) in counts.items():
                await session.execute(
                    update(HandlerRow)
                    .where(HandlerRow.node_id == node_id)
                    .values(
                        decoy_compared=HandlerRow.decoy_compared + compared,
                        decoy_agreed=HandlerRow.decoy_agreed + agreed,
                    )
                )


def _upgrade(connection: Connection, revision: str) -> None:
    # Imported here: Alembic takes a third of a second to import, and only opening needs it.
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _new_row(handler: Handler, source: str, now: datetime) -> HandlerRow:
    row = HandlerRow(
        node_id=handler.node_id,
        source=source,
        created_at=now,
        updated_at=now,
        last_seen_at=now,
        retired=handler.retired,
        disabled_by_admin=False,
        decoy_compared=0,
        decoy_agreed=0,
        registered=True,
    )
    for field in DISCOVERED_FIELDS:
        setattr(row, field, _column_value(handler, field))
    return row


def _set(row: HandlerRow, now: datetime, **values: Any) -> int:
    """Set columns that differ; returns 1 if anything changed."""
    changed = 0
    for column, value in values.items():
        if getattr(row, column) != value:
            setattr(row, column, value)
            changed = 1
    if changed:
        row.updated_at = now
    return changed


def _apply(row: HandlerRow, handler: Handler, source: str, now: datetime) -> int:
    """Copy discovered fields onto a row; returns 1 if anything changed."""
    changed = 0
    for field in DISCOVERED_FIELDS:
        value = _column_value(handler, field)
        if getattr(row, field) != value:
            setattr(row, field, value)
            changed = 1
    if row.source != source:
        row.source, changed = source, 1
    row.last_seen_at = now
    if changed:
        row.updated_at = now
    return changed


def _column_value(handler: Handler, field: str) -> Any:
    value = getattr(handler, field)
    if isinstance(value, ModelType):
        return value.value
    if isinstance(value, list):
        return list(value)
    return value


async def _by_node_id(session: AsyncSession, node_id: str) -> HandlerRow | None:
    row: HandlerRow | None = await session.scalar(
        select(HandlerRow).where(HandlerRow.node_id == node_id)
    )
    return row


async def _row(session: AsyncSession, node_id: str) -> HandlerRow:
    row = await _by_node_id(session, node_id)
    if row is None:
        raise HandlerNotFoundError(f"no handler {node_id}")
    return row


def _first_line(exc: BaseException) -> str:
    """The driver's own message, first line only, without the SQL or the error's class."""
    inner = getattr(exc, "orig", None) or exc
    line = (str(inner).strip().splitlines() or [""])[0]
    # asyncpg's errors come as "<class 'asyncpg...Error'>: message".
    line = re.sub(r"^<class '[\w.]+'>: ", "", line).strip()
    if isinstance(inner, ConnectionRefusedError) or (not line and isinstance(inner, OSError)):
        return os.strerror(inner.errno).lower() if inner.errno else "cannot connect"
    return one_line(line or type(inner).__name__, 200)
