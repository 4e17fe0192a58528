"""A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for dev, tests and CI.

The broker's classpath is collected from Maven Central with ``kafka-pom.xml`` into a cache outside
the repository (:func:`assemble`); :class:`KafkaBroker` formats a data directory and runs
``kafka.Kafka`` on 127.0.0.1, either attached to the calling process or detached (``make up``).

Given SCRAM users, the broker also serves clients on a SASL_SSL listener (SCRAM-SHA-512 over TLS,
certificates made at start by :mod:`pipeline.devstack.broker.tls`); the users are created when the
data directory is formatted. The plaintext listener stays, on loopback only, for the broker's own
inter-broker traffic and for the readiness probe, which speaks the wire protocol without TLS.

Version choice: KAFKA_VERSION is the newest 4.x release that can be assembled from Maven Central and
passes our client checks: aiokafka 0.14.0 (headers, group commit, topic configs, transactions) and a
faust-streaming 0.15.3 app with a table, at-least-once and exactly-once. 4.4.0 cannot be assembled:
its dependency ``org.apache.kafka:kafka-tools-api:4.4.0`` is not published on Maven Central.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from pipeline.devstack.broker.tls import BrokerTLS, generate_broker_tls
from pipeline.settings import KafkaSecurity, Settings

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "DetachedBroker",
    "KafkaBroker",
    "assemble",
    "detached_info",
    "stop_detached",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"

POM_PATH = Path(__file__).with_name("kafka-pom.xml")
_MARKER = ".complete"
_STATE_FILE = "broker.json"
_NODE_ID = 1
_HEAP = "512m"
_STOP_GRACE_S = 20.0
# The mechanism of the SASL_SSL listener and of the users created with it.
SCRAM_MECHANISM = "SCRAM-SHA-512"


class BrokerError(RuntimeError):
    """Assembling, starting or stopping the local Kafka broker failed."""


# Attached brokers still running when the interpreter exits (a fixture whose teardown never ran,
# an unhandled exception in a script) are stopped so no JVM outlives its owner. This cannot help
# when the owner is SIGKILLed; detached brokers are deliberately left alone. Strong references:
# a running broker must stay reachable even if its owner dropped it.
_attached: set[KafkaBroker] = set()


@atexit.register
def _stop_attached_brokers() -> None:
    for broker in list(_attached):
        broker.stop()


# --------------------------------------------------------------------------- assembly


def assemble(cache_dir: Path, version: str = KAFKA_VERSION) -> Path:
    """Ensure the broker's jars for ``version`` are in the cache; return the ``libs`` directory.

    Fast when already assembled (a marker file is written only after a complete copy). Concurrent
    callers (pytest workers, ``make up``) serialise on a lock file so Maven runs at most once.
    """
    root = Path(cache_dir)
    version_dir = root / f"kafka-{version}"
    libs = version_dir / "libs"
    if _is_assembled(libs, version):
        return libs

    version_dir.mkdir(parents=True, exist_ok=True)
    with open(version_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_assembled(libs, version):  # another process finished while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven ('mvn') is not on PATH; it is needed once to download the Kafka broker "
                f"jars into {libs}. Install Maven 3.6+ and Java 17+."
            )
        # Copy into a fresh staging dir and rename at the end, so an interrupted run never
        # leaves a half-filled libs/ that looks usable.
        staging = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=version_dir))
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_PATH),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        log.info("assembling Kafka %s into %s (mvn dependency:copy-dependencies)", version, libs)
        started = time.monotonic()
        try:
            # cwd keeps Maven's target/ and friends out of the repository.
            output = _run_checked(cmd, version_dir, "mvn", tail_lines=40)
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if f"kafka_2.13-{version}.jar" not in jars:
                raise BrokerError(
                    f"mvn succeeded but kafka_2.13-{version}.jar is missing from {staging}:\n{_tail(output, 40)}"
                )
            if libs.exists():
                shutil.rmtree(libs)  # unmarked leftovers of an older, incomplete layout
            staging.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (libs / _MARKER).write_text("\n".join(jars) + "\n")
        log.info("assembled Kafka %s (%d jars) in %.1fs", version, len(jars), time.monotonic() - started)
    return libs


def _is_assembled(libs: Path, version: str) -> bool:
    return (libs / _MARKER).is_file() and (libs / f"kafka_2.13-{version}.jar").is_file()


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class DetachedBroker:
    """What a detached broker records in ``<data_dir>/broker.json`` for later processes."""

    pid: int
    port: int
    controller_port: int
    version: str
    log_path: str
    sasl_port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"


class KafkaBroker:
    """A single-node KRaft Kafka broker on 127.0.0.1.

    Usage::

        with KafkaBroker() as broker:
            run_pipeline(bootstrap_servers=broker.bootstrap_servers)

    Without ``data_dir`` a fresh temporary directory is used and removed by :meth:`stop`; a given
    ``data_dir`` is kept (and an already formatted one is reused as is).

    With ``scram_users`` (name -> password) clients may also connect on ``sasl_port`` with
    SASL_SSL (:attr:`sasl_bootstrap_servers`, :meth:`client_security`).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        log_path: Path | None = None,
        cache_dir: Path | None = None,
        scram_users: Mapping[str, str] | None = None,
        sasl_port: int | None = None,
    ) -> None:
        # The jars' cache: the caller's settings, else SPEAKERFLOW_CACHE or its default.
        self.cache_dir = cache_dir if cache_dir is not None else Settings.from_env().cache_dir
        self._owns_data_dir = data_dir is None
        # Absolute, because the JVM runs with data_dir as cwd and detached lookups match on the path.
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="speakerflow-kafka-")) if data_dir is None else Path(data_dir)
        ).resolve()
        self.scram_users = dict(scram_users or {})
        self.port, self.controller_port, picked_sasl_port = _pick_ports(port, controller_port, sasl_port)
        self.sasl_port = picked_sasl_port if self.scram_users else None
        self.tls: BrokerTLS | None = None
        self.version = version
        self.log_path = Path(log_path).resolve() if log_path is not None else self.data_dir / "server.log"
        self._jvm_out_path = self.data_dir / "jvm.out"
        self._log_dirs = self.data_dir / "kraft-logs"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """The SASL_SSL listener; only with ``scram_users``."""
        if self.sasl_port is None:
            raise BrokerError("this broker has no SASL_SSL listener: start it with scram_users")
        return f"127.0.0.1:{self.sasl_port}"

    def client_security(self, username: str, password: str | None = None) -> KafkaSecurity:
        """How a client logs in on the SASL_SSL listener as `username` (with its own password unless given)."""
        if self.tls is None:
            raise BrokerError("the broker's certificates are made at start; start it first")
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            username=username,
            password=self.scram_users[username] if password is None else password,
            ca_file=self.tls.ca_file,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0, detach: bool = False) -> KafkaBroker:
        """Format storage if needed, launch the JVM and wait until the broker serves metadata.

        With ``detach=True`` the JVM gets its own session (it survives this process and terminal
        signals) and ``<data_dir>/broker.json`` is written for :func:`stop_detached`.
        """
        if self.is_running():
            return self
        running = detached_info(self.data_dir)
        if running is not None:
            raise BrokerError(
                f"a detached broker (pid {running.pid}, {running.bootstrap_servers}) already uses "
                f"{self.data_dir}; stop it with stop_detached() first"
            )
        java = _java()
        libs = assemble(self.cache_dir, self.version)
        classpath = str(libs / "*")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.scram_users:
            try:
                self.tls = generate_broker_tls(self.data_dir / "tls", java)
            except (OSError, RuntimeError) as exc:
                raise BrokerError(f"making the SASL_SSL listener's certificates failed: {exc}") from exc
        props = self._write_server_properties()
        log4j = self._write_log4j_config()
        jvm_opts = [
            f"-Xmx{_HEAP}",
            "-Xms64m",
            # Serial GC: fewer GC threads on small CI machines; pauses are irrelevant at this heap.
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
        ]

        started = time.monotonic()
        if not (self._log_dirs / "meta.properties").exists():
            self._format_storage(java, jvm_opts, classpath, props)

        jvm_out = open(self._jvm_out_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [java, *jvm_opts, "-cp", classpath, "kafka.Kafka", str(props)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=jvm_out,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        finally:
            jvm_out.close()
        if detach:
            # Recorded before waiting, so a launcher killed mid-start leaves a stoppable broker.
            self._write_state()
        else:
            _attached.add(self)
        log.info(
            "starting Kafka %s (pid %d) on %s, data in %s",
            self.version,
            self._proc.pid,
            self.bootstrap_servers,
            self.data_dir,
        )
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info("Kafka ready on %s after %.1fs", self.bootstrap_servers, time.monotonic() - started)
        return self

    def stop(self, grace: float = _STOP_GRACE_S) -> None:
        """SIGTERM the broker (SIGKILL after ``grace`` seconds); remove a temporary data_dir."""
        proc, self._proc = self._proc, None
        _attached.discard(self)
        if proc is not None and proc.poll() is None:
            log.info("stopping Kafka (pid %d)", proc.pid)
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
                proc.kill()
                proc.wait()
        (self.data_dir / _STATE_FILE).unlink(missing_ok=True)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash or a lost node ends it: no orderly shutdown.

        The data directory and the ports are kept, so :meth:`start` brings the same broker back
        on both (the JVM recovers its logs from the unclean shutdown).
        """
        if not self.is_running():
            raise BrokerError("the broker is not running")
        assert self._proc is not None
        proc, self._proc = self._proc, None
        _attached.discard(self)
        log.info("killing Kafka (pid %d)", proc.pid)
        proc.kill()
        proc.wait()
        (self.data_dir / _STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker({self.bootstrap_servers}, version={self.version}, data_dir={self.data_dir})"

    # -- internals

    def _write_server_properties(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            # A static voter set (rather than 4.x's dynamic quorum) keeps the controller endpoint out
            # of the formatted metadata, so a reused data_dir may come back on different ports.
            "controller.quorum.voters": f"{_NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._log_dirs),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # One partition each instead of 50: the first group/transaction coordinator lookup on
            # a fresh broker is then near-instant, and a single node gains nothing from more.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        if self.tls is not None:
            props.update(self._sasl_ssl_properties(props))
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _sasl_ssl_properties(self, props: dict[str, str]) -> dict[str, str]:
        """A SASL_SSL listener for clients beside the plaintext one (which stays the inter-broker listener)."""
        assert self.tls is not None
        listener = f"SASL_SSL://127.0.0.1:{self.sasl_port}"
        mechanism = SCRAM_MECHANISM.lower()
        return {
            "listeners": f"{props['listeners']},{listener}",
            "advertised.listeners": f"{props['advertised.listeners']},{listener}",
            "listener.security.protocol.map": f"{props['listener.security.protocol.map']},SASL_SSL:SASL_SSL",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            # The server side of SCRAM needs a login module entry; the users' credentials live in the metadata log.
            f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.keystore.password": self.tls.password,
            "ssl.key.password": self.tls.password,
            "ssl.client.auth": "none",
        }

    def _write_log4j_config(self) -> Path:
        path = self.data_dir / "log4j2.properties"
        path.write_text(
            "\n".join(
                [
                    "status = warn",
                    # Kafka logs its own orderly shutdown from a JVM shutdown hook; log4j's hook
                    # would race it, drop those lines and warn on stdout. Writes flush per line.
                    "shutdownHook = disable",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.log_path}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    # Per-request and per-partition state chatter is noise for a dev broker.
                    "logger.request.name = kafka.request.logger",
                    "logger.request.level = WARN",
                    "logger.state.name = state.change.logger",
                    "logger.state.level = WARN",
                    "",
                ]
            )
        )
        return path

    def _format_storage(self, java: str, jvm_opts: list[str], classpath: str, props: Path) -> None:
        cmd = [
            java,
            *jvm_opts,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(props),
            "--cluster-id",
            _new_cluster_id(),
        ]
        for name, password in self.scram_users.items():
            cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        _run_checked(cmd, self.data_dir, f"formatting Kafka storage in {self.data_dir}", tail_lines=30)

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        expected_cluster = self._cluster_id()
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(f"Kafka exited with code {code} during startup\n{self._log_tails()}")
            try:
                cluster_id, node_ids = _probe_metadata("127.0.0.1", self.port, timeout=2.0)
            except (OSError, struct.error) as exc:  # refused / reset / garbled while the JVM boots
                last_error = exc
            else:
                # Comparing cluster ids catches someone else's broker answering on our port.
                if cluster_id == expected_cluster and _NODE_ID in node_ids:
                    return
                last_error = BrokerError(f"port answered for cluster {cluster_id}, nodes {node_ids}")
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"Kafka did not serve metadata on {self.bootstrap_servers} in time "
                    f"(last probe error: {last_error!r})\n{self._log_tails()}"
                )
            time.sleep(0.25)

    def _cluster_id(self) -> str:
        for line in (self._log_dirs / "meta.properties").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
        raise BrokerError(f"no cluster.id in {self._log_dirs / 'meta.properties'}")

    def _log_tails(self) -> str:
        parts = []
        for path in (self.log_path, self._jvm_out_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            # The cause is usually an ERROR line and a "Caused by:" deep in a long stack trace,
            # which a plain tail cuts off; show those lines as well.
            errors = [
                line
                for line in text.splitlines()
                if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")
            ]
            if errors:
                parts.append(f"--- errors in {path}:\n" + "\n".join(errors[:10]))
            parts.append(f"--- last lines of {path}:\n{_tail(text, 30)}")
        return "\n".join(parts)

    def _write_state(self) -> None:
        assert self._proc is not None
        state = DetachedBroker(
            pid=self._proc.pid,
            port=self.port,
            controller_port=self.controller_port,
            version=self.version,
            log_path=str(self.log_path),
            sasl_port=self.sasl_port,
        )
        tmp = self.data_dir / f"{_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.data_dir / _STATE_FILE)


# --------------------------------------------------------------------------- detached brokers


def detached_info(data_dir: Path) -> DetachedBroker | None:
    """The detached broker recorded in ``data_dir`` if it is still running, else None."""
    try:
        raw = json.loads((Path(data_dir) / _STATE_FILE).read_text())
        state = DetachedBroker(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return state if _is_our_broker(state.pid, Path(data_dir)) else None


def stop_detached(data_dir: Path, grace: float = _STOP_GRACE_S) -> bool:
    """Stop a broker started with ``start(detach=True)`` on ``data_dir``.

    Returns True if a running broker was stopped, False if none was running. The data is kept.
    """
    data_dir = Path(data_dir)
    state = detached_info(data_dir)
    if state is None:
        (data_dir / _STATE_FILE).unlink(missing_ok=True)
        return False
    log.info("stopping detached Kafka (pid %d) in %s", state.pid, data_dir)
    # The broker leads its own session/process group (start_new_session), so signal the group.
    _signal_group(state.pid, signal.SIGTERM)
    if not _wait_gone(state.pid, grace):
        log.warning("Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", state.pid, grace)
        _signal_group(state.pid, signal.SIGKILL)
        if not _wait_gone(state.pid, 10.0):
            raise BrokerError(f"Kafka (pid {state.pid}) is still alive after SIGKILL")
    (data_dir / _STATE_FILE).unlink(missing_ok=True)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def pid_alive(pid: int) -> bool:
    # If we are the parent (detached in this very process), reap it so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guard against a recycled pid: the process must be a kafka.Kafka JVM for this data_dir."""
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():  # no procfs (macOS): trust the live pid
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in args and str(data_dir.resolve() / "server.properties").encode() in args


# --------------------------------------------------------------------------- helpers


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError("Java ('java') is not on PATH and JAVA_HOME is unset; Kafka needs Java 17+.")
    return found


def _pick_ports(*ports: int | None) -> tuple[int, ...]:
    # Every socket stays bound until all numbers are chosen, so no two can coincide.
    with contextlib.ExitStack() as stack:
        chosen = []
        for wanted in ports:
            if wanted is not None:
                chosen.append(wanted)
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            chosen.append(sock.getsockname()[1])
    return tuple(chosen)


def _new_cluster_id() -> str:
    # Kafka's Uuid format (URL-safe base64, no padding); it also avoids a leading '-', which
    # command-line parsers would take for an option.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _probe_metadata(host: str, port: int, timeout: float) -> tuple[str | None, set[int]]:
    """Cluster id and node ids from a raw Metadata v4 request (no topics).

    Speaking the wire protocol directly keeps the readiness check free of an asyncio loop, so
    :meth:`KafkaBroker.start` also works from inside running event loops. A KRaft broker only
    processes requests once it is registered and unfenced, so an answer listing our node means
    it is ready for clients.
    """
    client_id = b"speakerflow-probe"
    correlation_id = 1
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)

    def read_string(offset: int) -> tuple[str | None, int]:
        (length,) = struct.unpack_from(">h", payload, offset)
        offset += 2
        if length < 0:
            return None, offset
        return payload[offset : offset + length].decode(), offset + length

    got_correlation, _throttle_ms, n_brokers = struct.unpack_from(">iii", payload, 0)
    if got_correlation != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_correlation}")
    offset = 12
    node_ids = set()
    for _ in range(n_brokers):
        (node_id,) = struct.unpack_from(">i", payload, offset)
        _host, offset = read_string(offset + 4)
        _rack, offset = read_string(offset + 4)  # skips the port
        node_ids.add(node_id)
    cluster_id, _ = read_string(offset)
    return cluster_id, node_ids


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _run_checked(cmd: list[str], cwd: Path, what: str, tail_lines: int) -> str:
    """Run cmd and return its output; on failure raise BrokerError with the command and the output's tail."""
    proc = subprocess.run(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if proc.returncode != 0:
        raise BrokerError(
            f"{what} failed (exit {proc.returncode}):\n$ {' '.join(cmd)}\n{_tail(proc.stdout, tail_lines)}"
        )
    return proc.stdout


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
