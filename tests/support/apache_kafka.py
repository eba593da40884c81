"""A real single-node Apache Kafka (KRaft, no ZooKeeper) for tests and local development.

The broker's jars are resolved with Maven into a cache folder outside the repository
(`~/.cache/logistik-test-kafka/<version>/jars`, or `$LK_KAFKA_CACHE/<version>/jars`) and run with
the `java` on PATH. As a command:

    python -m tests.support.apache_kafka fetch   # resolve the jars, print their folder
    python -m tests.support.apache_kafka run     # start a broker, print its address; Ctrl-C stops
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

from confluent_kafka.admin import AdminClient

from logistik.children import die_with_parent
from logistik.errors import LogistikError
from logistik.kafka.embedded import EmbeddedBroker, free_port, port_is_free

# The one place the Apache Kafka version of the tests is chosen.
KAFKA_VERSION = "4.4.0"
# A newer plugin than the one Maven falls back to without a version.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Fast start over peak speed: the tests' load is small and the machine may have few cores.
JVM_OPTIONS = ("-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
# What Kafka's own start script gives a broker: for measuring, where peak speed counts.
SERVER_JVM_OPTIONS = (
    "-Xms1g",
    "-Xmx1g",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
)

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>logistik.tests</groupId>
  <artifactId>apache-kafka-jars</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2 = """rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
"""


class ApacheKafkaError(LogistikError):
    """Apache Kafka for the tests could not be fetched or started."""


def cache_root() -> Path:
    """The folder that holds one subfolder of jars per Kafka version."""
    configured = os.environ.get("LK_KAFKA_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "logistik-test-kafka"


def _tool(name: str, package: str) -> str:
    """The path of a command on PATH, or an error saying which package provides it."""
    found = shutil.which(name)
    if found is None:
        raise ApacheKafkaError(f"Apache Kafka for the tests needs `{name}` (install {package})")
    return found


def _maven(workdir: Path, *args: str) -> None:
    """Run one Maven goal in a folder; fail with the first error Maven names."""
    command = [_tool("mvn", "maven"), "-B", "-q", *args]
    result = subprocess.run(
        command, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
        # Maven's first error line names the cause; the ones after it are advice.
        errors = re.findall(r"\[ERROR\] (\S.*)", output) or [f"exit code {result.returncode}"]
        raise ApacheKafkaError(f"mvn {args[0].rsplit(':', 1)[-1]} failed: {errors[0]}")


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """The folder of the broker's jars and their runtime dependencies, resolved once per version."""
    jars = cache_root() / version / "jars"
    if (jars / f"kafka_2.13-{version}.jar").is_file():
        return jars
    jars.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resolve-", dir=jars.parent) as scratch:
        work = Path(scratch)
        (work / "pom.xml").write_text(POM.format(version=version))
        staged = work / "jars"
        _maven(
            work,
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staged}",
            "-DincludeScope=runtime",
        )
        # Kafka depends on slf4j and log4j 2 but on no binding between them: add the one of the
        # same log4j release, or the broker would log nothing.
        log4j = [p.name for p in staged.glob("log4j-api-*.jar")]
        match = re.fullmatch(r"log4j-api-(.+)\.jar", log4j[0]) if log4j else None
        if match is None:
            raise ApacheKafkaError(f"Kafka {version} brought no log4j-api jar to bind slf4j to")
        _maven(
            work,
            f"{DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact=org.apache.logging.log4j:log4j-slf4j-impl:{match.group(1)}",
            f"-DoutputDirectory={staged}",
        )
        try:
            staged.rename(jars)
        except OSError:
            if not jars.is_dir():  # else another process resolved the same version meanwhile
                raise
    return jars


def _cluster_id() -> str:
    """A random Kafka cluster id (a base64 uuid) that a command line cannot take for an option."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


class ApacheKafka:
    """One Apache Kafka process that is both broker and controller, on loopback ports.

    Its data lives in a temporary folder that stays across kill() and restart() (which reuse
    the same ports) and is removed by stop(); its log is kept.
    """

    def __init__(
        self,
        log_path: Path | None = None,
        version: str = KAFKA_VERSION,
        auto_create_topics: bool = True,
        jvm_options: Sequence[str] = JVM_OPTIONS,
    ) -> None:
        self.version = version
        self.jvm_options = tuple(jvm_options)
        self.auto_create_topics = auto_create_topics
        self.port = free_port()
        self.controller_port = free_port()
        self._home = Path(tempfile.mkdtemp(prefix="lk-kafka-"))
        self.log_path = log_path or self._home / "kafka.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _write_config(self) -> Path:
        """server.properties for a one-node cluster that starts fast and needs no replicas."""
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": str(self._home / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the controller refuses the restarted broker until the old
            # registration's session expires: keep that short so restart() is quick.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        path = self._home / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (self._home / "log4j2.properties").write_text(LOG4J2)
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        """The command line of one of Kafka's main classes."""
        return [
            _tool("java", "openjdk-17-jre-headless"),
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={self._home / 'log4j2.properties'}",
            "-cp",
            str(fetch_jars(self.version) / "*"),
            main,
            *args,
        ]

    def _format(self) -> None:
        """Write the one-node cluster's metadata into the empty log dir."""
        config = self._write_config()
        command = self._java(
            "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(), "-c"
        )
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [*command, str(config)], stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            raise ApacheKafkaError(
                f"formatting Apache Kafka's storage failed ({result.returncode}); "
                f"see {self.log_path}"
            )
        self._formatted = True

    def start(self, timeout_s: float = 60.0) -> ApacheKafka:
        """Start the broker (formatting its storage the first time) and wait until it serves."""
        if not self._formatted:
            self._format()
        self._launch()
        self._wait_ready(timeout_s)
        return self

    def _launch(self) -> None:
        """Start the broker process on this broker's ports once they are free."""
        deadline = time.monotonic() + 10
        while not (port_is_free(self.port) and port_is_free(self.controller_port)):
            if time.monotonic() > deadline:
                raise ApacheKafkaError(
                    f"cannot start Apache Kafka: port {self.port} or {self.controller_port} "
                    "is in use"
                )
            time.sleep(0.1)
        command = self._java("kafka.Kafka", str(self._home / "server.properties"))
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session, so a Ctrl-C meant for the tests does not stop it under them.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait until the broker answers a metadata request that lists itself."""
        deadline = time.monotonic() + timeout_s
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise ApacheKafkaError(
                    f"Apache Kafka exited with code {code} while starting; see {self.log_path}"
                )
            if admin is None:
                # Only once it listens: librdkafka logs every refused connection.
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
                except OSError:
                    time.sleep(0.05)
                continue
            try:
                if admin.list_topics(timeout=1).brokers:
                    return
            except Exception:
                time.sleep(0.05)  # not serving metadata yet
        self.stop_process(signal.SIGKILL)
        raise ApacheKafkaError(
            f"Apache Kafka did not answer metadata on {self.bootstrap_servers} within "
            f"{timeout_s:g} s; see {self.log_path}"
        )

    def stop_process(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """End the broker process with a signal (SIGKILL if it outlives timeout_s); data stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        if sig != signal.SIGKILL:
            process.send_signal(signal.SIGCONT)  # a paused broker handles the signal too
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open and nothing answers."""
        assert self._process is not None, "the broker is not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen broker go on (SIGCONT)."""
        assert self._process is not None, "the broker is not running"
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the broker at once (kill -9), as a crash would; restart() brings it back."""
        self.stop_process(signal.SIGKILL)

    def restart(self, timeout_s: float = 60.0) -> ApacheKafka:
        """Start the broker again on the same ports with the same data, stopping it first."""
        self.stop_process()
        self._launch()
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """Stop the broker gracefully and delete its data; the log stays."""
        self.stop_process()
        if self.log_path.is_relative_to(self._home):
            shutil.rmtree(self._home / "data", ignore_errors=True)
        else:
            shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# What the `broker` fixture gives a test: either broker serves `bootstrap_servers`.
Broker: TypeAlias = EmbeddedBroker | ApacheKafka


def main(argv: list[str] | None = None) -> int:
    """`fetch` resolves the jars; `run` starts a broker until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.apache_kafka",
        description=f"Apache Kafka {KAFKA_VERSION} for logistik's tests.",
    )
    parser.add_argument("command", choices=["fetch", "run"])
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_jars())
            return 0
        with ApacheKafka() as broker:
            print(
                f"Apache Kafka {broker.version} on {broker.bootstrap_servers} "
                f"(log: {broker.log_path}); Ctrl-C stops it",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except ApacheKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
