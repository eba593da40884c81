"""Raises a real librdkafka fatal error in a live producer, as a broker that lost its state would.

librdkafka has a function for exactly this (`rd_kafka_test_fatal_error`) that the Python client
does not expose: it is called here through ctypes on the producer's own handle, so the error
travels the same way as one from the broker (poll raises it, produce refuses with _FATAL).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import confluent_kafka
from confluent_kafka import KafkaError, Producer

# The client's Python object starts with its librdkafka handle, right after the object header.
_HANDLE_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)


@functools.cache
def _librdkafka() -> ctypes.CDLL:
    """The librdkafka the client loaded (bundled in its wheel), with the two functions used."""
    folder = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(folder.glob("librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka in {folder}: cannot inject fatal errors")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    return lib


def inject_fatal_error(
    producer: Producer, code: int = KafkaError.UNKNOWN_PRODUCER_ID, reason: str = "injected"
) -> None:
    """Put a live producer in librdkafka's fatal-error state."""
    lib = _librdkafka()
    handle = ctypes.c_void_p.from_address(id(producer) + _HANDLE_OFFSET).value
    name = lib.rd_kafka_name(handle) if handle else None
    if not name or b"#producer-" not in name:
        raise RuntimeError("the client's layout changed: its librdkafka handle was not found")
    result = lib.rd_kafka_test_fatal_error(handle, code, reason.encode())
    if result != 0:
        raise RuntimeError(f"librdkafka did not raise the fatal error (code {result})")
