"""The package's shape: each subpackage's exports are pinned, and layers import downwards only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "logistik"

EXPORTS = {
    "logistik": [
        "BrokerError",
        "Config",
        "ConfigError",
        "EmbeddedBrokerError",
        "Handler",
        "InvalidEventError",
        "LogistikError",
        "ModelType",
        "PublishError",
        "load_config",
        "parse_config",
    ],
    "logistik.routing": [
        "Backoff",
        "Backpressure",
        "Batcher",
        "ConsumeLoop",
        "DecoyTally",
        "Group",
        "LiveHandler",
        "ModelClient",
        "Registry",
        "ResponseCache",
        "Router",
        "Slots",
        "Source",
        "agrees",
        "classify",
        "classify_batch",
        "describe_error",
        "parse_retry_after",
    ],
    "logistik.control": [
        "ConsulClient",
        "ConsulDiscovery",
        "ConsulError",
        "HandlerRecord",
        "HandlerService",
        "Store",
        "StoreFollower",
        "with_service",
    ],
    "logistik.observe": [
        "EVENTS_LOGGER",
        "Alerter",
        "Figures",
        "Readiness",
        "Statsd",
        "Tracing",
        "metrics_registry",
        "setup_logging",
    ],
    "logistik.kafka": [
        "EmbeddedBroker",
        "EventConsumer",
        "EventProducer",
        "FetchStall",
        "Headers",
        "LibrdkafkaLog",
        "OffsetBook",
        "PartitionTracker",
        "QuietLog",
        "TopicPartitionKey",
        "base_config",
        "cluster_metadata",
        "command_consumer_config",
        "consumer_config",
        "embedded_session",
        "ensure_topics",
        "free_port",
        "header_pairs",
        "list_topics",
        "loopback_servers",
        "produce",
        "producer_config",
        "record_time",
        "retry_group",
        "topic_partitions",
        "try_produce",
        "write_error",
    ],
    "logistik.process": ["Runner", "Supervisor", "tune_gc"],
    "logistik.web": [
        "AppState",
        "Auth",
        "WebError",
        "add_operations_routes",
        "as_routed",
        "bind",
        "create_app",
        "handler_view",
        "hash_password",
        "host_views",
        "mount_ui",
        "record_fields",
        "serve",
        "verify_password",
    ],
}

# What each layer may not import. The core (routing, kafka, control, observe and the top-level
# value modules) never reaches up into the process wiring, the web or the commands.
UPPER = ("logistik.web", "logistik.commands", "logistik.process")
FORBIDDEN = {
    "routing": UPPER,
    "control": UPPER,
    "observe": UPPER,
    "kafka": (*UPPER, "logistik.routing", "logistik.control", "logistik.observe"),
}
CORE_MODULES = ("answer", "children", "config", "errors", "event", "handler", "protocol")


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_exports_are_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(EXPORTS[package])
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def imports_of(path: Path) -> set[str]:
    """Every logistik module a source file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "logistik" or name.startswith("logistik.")}


def reaches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in (PACKAGE / layer).rglob("*.py")
        for module in imports_of(path)
        if reaches(module, FORBIDDEN[layer])
    }
    assert sorted(wrong) == []


def test_core_modules_import_only_core_modules() -> None:
    core = tuple(f"logistik.{name}" for name in CORE_MODULES)
    wrong = {
        f"{name}.py imports {module}"
        for name in CORE_MODULES
        for module in imports_of(PACKAGE / f"{name}.py")
        if not reaches(module, core)
    }
    assert sorted(wrong) == []


def test_every_subpackage_says_what_it_is() -> None:
    packages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    undocumented = [
        p.name
        for p in packages
        if not ast.get_docstring(ast.parse((p / "__init__.py").read_text()))
    ]
    assert undocumented == []


def test_an_optional_part_without_its_extra_is_a_one_line_config_error() -> None:
    from logistik.config import require_extra
    from logistik.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        require_extra("logistik_absent_module", "cache", "cache")
    assert str(raised.value) == (
        "cache: needs the 'cache' extra, which is not installed (pip install 'logistik[cache]')"
    )
