"""The rollout actions on handlers, shared by the CLI and the REST API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from logistik.config import describe_validation
from logistik.control.rollout_store import RolloutStore, process_name
from logistik.control.store import HandlerRecord, Store
from logistik.errors import ActionError
from logistik.handler import Handler, ModelType

PRODUCTION = ModelType.MODEL.value
T = TypeVar("T")


async def with_service(url: str, action: Callable[[HandlerService], Awaitable[T]]) -> T:
    """Open the store at `url`, run one service action on it, close the store."""
    store = await Store.open(url)
    try:
        return await action(HandlerService(store))
    finally:
        await store.close()


class HandlerService:
    """List, add, edit and steer handlers; every rule of a rollout lives here."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def find(
        self,
        topic: str | None = None,
        model_type: str | None = None,
        host: str | None = None,
        state: str | None = None,
    ) -> list[HandlerRecord]:
        """Stored handlers, filtered by topic, type, host name or endpoint, and state."""
        records = await self.store.records()
        return [
            r
            for r in records
            if (topic is None or r.handler.event == topic)
            and (model_type is None or r.handler.model_type.value == model_type)
            and (host is None or host in (r.handler.hostname, r.handler.endpoint))
            and (state is None or r.state == state)
        ]

    async def show(self, node_id: str) -> HandlerRecord:
        """One handler."""
        return await self.store.get(node_id)

    async def add(self, fields: dict[str, Any]) -> HandlerRecord:
        """Register a handler by hand."""
        try:
            handler = Handler.model_validate(fields)
        except ValidationError as exc:
            raise ActionError(describe_validation(exc, "handler")) from None
        problem = handler.problem()
        if problem:
            raise ActionError(f"handler: {problem}")
        return await self.store.add(handler, source="api")

    async def edit(self, node_id: str, fields: dict[str, Any]) -> HandlerRecord:
        """Change a handler's fields."""
        return await self.store.edit(node_id, fields)

    async def enable(self, node_id: str) -> HandlerRecord:
        """Let a handler get events again after it was disabled by hand."""
        record = await self.store.get(node_id)
        if record.handler.retired:
            raise ActionError(
                f"{node_id} is retired; a retired handler does not come back "
                "(add the instance again under a new node)"
            )
        return await self.store.set_admin(node_id, disabled_by_admin=False)

    async def disable(self, node_id: str) -> HandlerRecord:
        """Stop sending events to a handler until it is enabled again."""
        await self._by_hand("disable", await self.store.get(node_id))
        return await self.store.set_admin(node_id, disabled_by_admin=True)

    async def retire(self, node_id: str) -> HandlerRecord:
        """Take a handler out of rotation for good; discovery never brings it back."""
        await self._by_hand("retire", await self.store.get(node_id))
        return await self.store.set_admin(node_id, retired=True)

    async def delete(self, node_id: str) -> None:
        """Remove a handler from the store (discovery adds it again if it is still registered)."""
        await self._by_hand("delete", await self.store.get(node_id))
        await self.store.delete(node_id)

    async def set_traffic(self, node_id: str, share: float) -> HandlerRecord:
        """Set the share (0-1) of its group's events a canary answers."""
        if not 0.0 <= share <= 1.0:
            raise ActionError(f"traffic must be between 0 and 1, got {share:g}")
        record = await self.store.get(node_id)
        if record.handler.model_type != ModelType.CANARY:
            raise ActionError(
                f"{node_id} is a {record.handler.model_type.value}; only a canary "
                "takes a traffic share"
            )
        await self._by_hand("traffic", record)
        return await self.store.set_admin(node_id, admin_traffic=share)

    async def promote(self, node_id: str, by_hand: bool = True) -> list[HandlerRecord]:
        """Make a canary, deploy or decoy production, with its version's replicas in the group.

        The group's current production instances become canaries with traffic 0, so a
        promotion is undone by promoting them back. Returns every handler changed. A
        promotion by hand ends the group's rollout; a rollout's own is not by hand.
        """
        target = await self.store.get(node_id)
        kind = target.handler.model_type
        if kind == ModelType.MODEL:
            raise ActionError(f"{node_id} is already production")
        group = await self._group(target)
        rising = [
            r
            for r in group
            if r.handler.model_type == kind
            and r.handler.version == target.handler.version
            and not r.handler.retired
        ]
        falling = [r for r in group if r.handler.model_type == ModelType.MODEL]
        if by_hand:
            await self._by_hand("promote", target)
        # One transaction: a router reloading in between would see both versions in production.
        return await self.store.set_admin_many(
            [(r.node_id, {"admin_model_type": PRODUCTION, "admin_traffic": None}) for r in rising]
            + [
                (r.node_id, {"admin_model_type": ModelType.CANARY.value, "admin_traffic": 0.0})
                for r in falling
            ]
        )

    async def demote(self, node_id: str) -> HandlerRecord:
        """Make a production instance a canary with traffic 0 (standby, promotable again)."""
        target = await self.store.get(node_id)
        if target.handler.model_type != ModelType.MODEL:
            raise ActionError(f"{node_id} is a {target.handler.model_type.value}, not production")
        others = [
            r
            for r in await self._group(target)
            if r.node_id != node_id and r.handler.model_type == ModelType.MODEL and r.handler.active
        ]
        if not others:
            raise ActionError(
                f"{node_id} is the last active production instance of group "
                f"{target.handler.group_id}; promote another one first"
            )
        await self._by_hand("demote", target)
        return await self.store.set_admin(
            node_id, admin_model_type=ModelType.CANARY.value, admin_traffic=0.0
        )

    async def _by_hand(self, action: str, record: HandlerRecord) -> None:
        """End the rollout of the handler's group before acting: what an operator does wins."""
        await RolloutStore(self.store).end_by_hand(record.handler, action, process_name())

    async def _group(self, record: HandlerRecord) -> list[HandlerRecord]:
        handler = record.handler
        return [
            r
            for r in await self.store.records()
            if r.handler.event == handler.event and r.handler.group_id == handler.group_id
        ]
