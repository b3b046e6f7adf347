"""A single-node KRaft Apache Kafka broker from Apache Kafka's own jars on Maven Central."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localinfra.process import (
    InfraError,
    port_open,
    read_pid,
    require_free,
    run_quiet,
    spawn_detached,
    stop_pid,
    wait_until,
)

KAFKA_VERSION = "4.1.1"
# Kafka 4.1 brings slf4j-api 1.7, which does not bind to log4j2: without the newer API the
# broker logs nothing at all.
ARTIFACTS = (
    ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
    ("org.slf4j", "slf4j-api", "2.0.17"),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
)

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


@dataclass(frozen=True)
class KafkaNode:
    state_dir: Path
    cache_dir: Path
    port: int
    controller_port: int
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def lib(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "lib"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    def running_pid(self) -> int | None:
        return read_pid(self.pid_file)

    def status(self) -> str:
        pid = self.running_pid()
        if pid is None:
            return "kafka: stopped"
        state = "ready" if port_open(self.port) else "starting"
        return f"kafka: {state} (pid {pid}) on {self.bootstrap}"

    def up(self) -> None:
        if self.running_pid() is not None:
            configured = (self.home / "server.properties").read_text()
            if f"PLAINTEXT://127.0.0.1:{self.port}," not in configured:
                raise InfraError(
                    f"the Kafka broker in {self.home} is already running on another port than {self.port}: "
                    "stop it first (loyalty infra down) or use its port (LOYALTY_LOCAL_KAFKA_PORT)"
                )
            wait_until(lambda: port_open(self.port), 60, "Kafka", self.log_file)
            return
        java = _java()
        require_free(self.port, "Kafka", "LOYALTY_LOCAL_KAFKA_PORT")
        require_free(self.controller_port, "the Kafka controller", "LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT")
        self._fetch_jars()
        self._configure()
        classpath = f"{self.lib}/*"
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = (
                subprocess.run(
                    [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            run_quiet(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.home / "server.properties"),
                ],
                self.log_file,
                "formatting Kafka storage",
            )
        pid = spawn_detached(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                # The quick compiler alone. A local broker shares a small machine with everything
                # it serves, and its optimising compiler was still at work minutes after start
                # (30% of a core at 200 commands/s on 2 cores) while every service waited for a
                # core: in `bench.serving_load`, purchases at 200/s had a p99 of 566-608 ms with
                # it, 375 ms without it, and the backlog settled 10% faster. Its code would be
                # faster at the peak; the bare transactional loop did not show it (19,884
                # records/s against 20,688-23,322, within this machine's swings).
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(self.home / "server.properties"),
            ],
            self.log_file,
        )
        self.pid_file.write_text(str(pid))
        wait_until(
            lambda: port_open(self.port) or read_pid(self.pid_file) is None, 90, "Kafka", self.log_file
        )
        if read_pid(self.pid_file) is None:
            raise InfraError(f"Kafka exited during start; see {self.log_file}")

    def down(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            stop_pid(pid, timeout_s=60)
        self.pid_file.unlink(missing_ok=True)

    def _configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "-1",
        }
        text = "".join(f"{key}={value}\n" for key, value in props.items())
        (self.home / "server.properties").write_text(text)
        (self.home / "log4j2.properties").write_text(LOG4J2)

    def _fetch_jars(self) -> None:
        """Resolve the broker's jars once into the cache with Maven."""
        marker = self.lib / ".complete"
        if marker.exists():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError(
                "Maven is needed once to fetch Apache Kafka's jars from Maven Central: "
                "install it (apt-get install -y maven) or set LOYALTY_KAFKA_BOOTSTRAP."
            )
        build = self.lib.parent
        build.mkdir(parents=True, exist_ok=True)
        deps = "".join(
            f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
            for g, a, v in ARTIFACTS
        )
        (build / "pom.xml").write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>local.loyalty</groupId><artifactId>kafka-broker</artifactId><version>1</version>"
            f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>"
        )
        run_quiet(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(build / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.lib}",
                "-DincludeScope=runtime",
            ],
            build / "maven.log",
            "fetching Apache Kafka from Maven Central",
        )
        marker.touch()


def _java() -> str:
    java = shutil.which("java", path=os.environ.get("PATH"))
    if java is None:
        raise InfraError(
            "Java 17 or newer is needed to run the local Kafka broker: install it "
            "(apt-get install -y openjdk-17-jre-headless) or set LOYALTY_KAFKA_BOOTSTRAP."
        )
    return java
