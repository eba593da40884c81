"""Optional statsd timings: one UDP datagram per model call, fire and forget."""

from __future__ import annotations

import asyncio
import logging
import re

from logistik.answer import Answer
from logistik.config import StatsdConfig

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class _Quiet(asyncio.DatagramProtocol):
    """Ignores what comes back (statsd answers nothing; an ICMP error means it is away)."""

    def error_received(self, exc: Exception) -> None:
        logger.debug("statsd: %s", exc)


class Statsd:
    """Sends `<prefix>.<handler>.latency:<ms>|ms` and `<prefix>.<handler>.<outcome>:1|c`."""

    def __init__(self, config: StatsdConfig) -> None:
        self._config = config
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Open the UDP socket."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            _Quiet, remote_addr=(self._config.host, self._config.port)
        )

    def call(self, name: str, answer: Answer) -> None:
        """Send one call's timing and outcome."""
        if self._transport is None:
            return
        key = f"{self._config.prefix}.{_UNSAFE.sub('_', name)}"
        packet = (
            f"{key}.latency:{answer.latency_s * 1000:.3f}|ms\n{key}.{answer.kind}:1|c"
        ).encode()
        self._transport.sendto(packet)

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()
