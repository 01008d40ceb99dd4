"""A certificate authority of the test's own, and a certificate it signs, made with openssl.

For the relay's TLS front in the tests (nginx with deploy/'s config) and the boxes that must
trust it (CLOUD_CA). Nothing here is a secret worth keeping: the keys live in the test's folder.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RelayCA:
    """A CA certificate, and a server certificate (with its key) for `names` signed by it."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed (Debian's openssl package)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_ca(
    folder: Path,
    *,
    names: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    not_before: float | None = None,
    days: int = 30,
) -> RelayCA:
    """Make a CA and a server certificate for `names` and `ips` (valid from `not_before`)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "relay.key", folder / "relay.csr", folder / "relay.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
        "-out", str(ca), "-days", str(days), "-subj", "/CN=Pitlink test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={names[0] if names else ips[0]}",
    )  # fmt: skip
    san = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{i}" for i in ips)])
    extensions = folder / "server.ext"
    extensions.write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    start = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(not_before or time.time() - 86400))
    end = time.strftime("%Y%m%d%H%M%SZ", time.gmtime((not_before or time.time()) + days * 86400))
    # `openssl ca` would need a database; x509 -req signs with set dates through -not_before
    # only from OpenSSL 3.4, so the dates are set with a one-off ca config instead.
    db = folder / "ca-db"
    db.mkdir(exist_ok=True)
    (db / "index.txt").write_text("")
    (db / "serial").write_text("01\n")
    config = folder / "ca.cnf"
    config.write_text(
        "[ca]\ndefault_ca = test\n[test]\n"
        f"dir = {db}\ndatabase = {db}/index.txt\nserial = {db}/serial\n"
        f"new_certs_dir = {db}\ndefault_md = sha256\npolicy = anything\n"
        "copy_extensions = none\nunique_subject = no\n"
        "[anything]\ncommonName = supplied\n"
    )
    _openssl(
        "ca", "-batch", "-config", str(config), "-cert", str(ca), "-keyfile", str(ca_key),
        "-in", str(csr), "-out", str(cert), "-extfile", str(extensions),
        "-startdate", start, "-enddate", end, "-notext",
    )  # fmt: skip
    return RelayCA(ca=ca, cert=cert, key=key)
