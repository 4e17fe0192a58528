"""Certificates for the local broker's SASL_SSL listener, made with the JDK's keytool at run time.

A throwaway CA signs one broker certificate for 127.0.0.1 and localhost. The broker reads a
PKCS12 keystore holding that certificate and its key; clients verify the broker against the
CA, written as PEM (``ca.pem``) for Python's ``ssl``. keytool ships with every JDK, so the
broker's Java is all this needs: no certificate is ever checked in or downloaded.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BrokerTLS", "generate_broker_tls"]

# Good for a long-lived `make up` data dir, short enough that a leaked dev CA soon expires.
_VALIDITY_DAYS = "365"
# EC keys: keytool makes them in a fraction of the time of RSA keys, and every TLS client takes them.
_KEY = ["-keyalg", "EC", "-groupname", "secp256r1"]
# keytool is a short-lived JVM: the quick JIT tier and one GC thread halve each of its seven runs.
_JVM = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC"]


@dataclass(frozen=True)
class BrokerTLS:
    """The files of one broker's TLS identity."""

    keystore: Path  # PKCS12: the broker's key and certificate chain
    password: str = field(repr=False)  # of the keystore and of the key in it
    ca_file: Path  # PEM: the CA clients trust

    @classmethod
    def load(cls, directory: Path) -> BrokerTLS | None:
        """The identity generated earlier in `directory`, None if there is none (or only part of one)."""
        tls = cls(directory / "broker.p12", "", directory / "ca.pem")
        password_file = directory / "keystore.password"
        if not (tls.keystore.is_file() and tls.ca_file.is_file() and password_file.is_file()):
            return None
        return cls(tls.keystore, password_file.read_text().strip(), tls.ca_file)


def generate_broker_tls(directory: Path, java: str) -> BrokerTLS:
    """A new CA and a broker certificate signed by it, in `directory`; reuses what an earlier call made there.

    `java` is the broker's java binary: keytool is taken from the same JDK.
    """
    existing = BrokerTLS.load(directory)
    if existing is not None:
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    keytool = _keytool(java)
    password = secrets.token_urlsafe(18)
    ca_store = directory / "ca.p12"
    keystore = directory / "broker.p12"
    ca_file = directory / "ca.pem"
    request = directory / "broker.csr"
    signed = directory / "broker.pem"
    for leftover in (ca_store, keystore, ca_file, request, signed):
        leftover.unlink(missing_ok=True)

    def run(*args: str) -> None:
        _keytool_checked([keytool, *_JVM, *args, "-storepass", password, "-noprompt"], directory)

    ca = ["-keystore", str(ca_store), "-storetype", "PKCS12"]
    broker = ["-keystore", str(keystore), "-storetype", "PKCS12"]
    run("-genkeypair", "-alias", "ca", *_KEY, "-dname", "CN=speakerflow local CA", "-ext", "bc:c",
        "-validity", _VALIDITY_DAYS, *ca, "-keypass", password)  # fmt: skip
    run("-exportcert", "-rfc", "-alias", "ca", *ca, "-file", str(ca_file))
    run("-genkeypair", "-alias", "broker", *_KEY, "-dname", "CN=127.0.0.1", "-validity", _VALIDITY_DAYS,
        *broker, "-keypass", password)  # fmt: skip
    run("-certreq", "-alias", "broker", *broker, "-file", str(request))
    # Clients check the host name they dialled against the certificate's subject alternative names.
    run("-gencert", "-alias", "ca", *ca, "-infile", str(request), "-outfile", str(signed), "-rfc",
        "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-ext", "EKU=serverAuth", "-validity", _VALIDITY_DAYS)  # fmt: skip
    # The chain goes in CA first, so the signed certificate replaces the self-signed one under its key.
    run("-importcert", "-alias", "ca", "-file", str(ca_file), *broker)
    run("-importcert", "-alias", "broker", "-file", str(signed), *broker)
    request.unlink()
    signed.unlink()
    # Written last: its presence is what marks the identity complete (BrokerTLS.load).
    (directory / "keystore.password").write_text(password + "\n")
    return BrokerTLS(keystore, password, ca_file)


def _keytool(java: str) -> str:
    # The JDK that runs the broker has keytool beside java (through any /usr/bin symlinks).
    beside = Path(java).resolve().parent / "keytool"
    if beside.is_file():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        raise FileNotFoundError(f"keytool is neither beside {java} nor on PATH; it comes with every JDK")
    return found


def _keytool_checked(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if proc.returncode != 0:
        # The command line holds the store password, so only the subcommand is named.
        raise RuntimeError(f"keytool {cmd[len(_JVM) + 1]} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
