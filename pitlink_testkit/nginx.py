"""nginx from Debian in front of relays, as deploy/nginx-pitlink.conf has it, on loopback.

The example is run as it is, with only its ports, upstreams and certificate paths rewritten,
so the tests prove the file an operator copies.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from pitlink_testkit.tls import RelayCA

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "nginx-pitlink.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise RuntimeError("nginx is not installed: ./scripts/test installs Debian's nginx-light")
    return found


def nginx_config(
    folder: Path,
    *,
    upstreams: list[int],
    plain: int,
    tls: int,
    certificate: RelayCA | None = None,
    listen: str = "127.0.0.1",
) -> Path:
    """deploy/'s example with these ports (and the test CA's certificate), as a whole config.

    Without a certificate there is no TLS: the https server is served plain on `plain` (for
    the replica tests, which need nginx only as a balancer), and the redirecting one is left
    out.
    """
    example = EXAMPLE.read_text()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in upstreams)
    example = re.sub(r"(    server 127\.0\.0\.1:\d+ max_fails=0;\n)+", servers, example)
    if certificate is not None:
        example = example.replace("listen 80;", f"listen {listen}:{plain};")
        example = example.replace("listen 443 ssl;", f"listen {listen}:{tls} ssl;")
        example = example.replace("https://$host$request_uri", f"https://$host:{tls}$request_uri")
        example = example.replace("/etc/ssl/pitlink/relay.crt", str(certificate.cert))
        example = example.replace("/etc/ssl/pitlink/relay.key", str(certificate.key))
    else:
        redirecting = re.compile(r"\nserver \{\n    listen 80;\n.*?\n\}\n", re.DOTALL)
        example = redirecting.sub("\n", example)
        example = example.replace("listen 443 ssl;", f"listen {listen}:{plain};")
        example = re.sub(r"\n    ssl_[^\n]*;", "", example)
    conf = folder / "nginx.conf"
    # Run as root (as the tests are), nginx's workers would be `nobody`, who cannot reach the
    # temporary folders under the test's own (pytest's are private to root): a body too big
    # for the memory buffers, such as an update bundle read slowly by an emulated box, would
    # fail with "Permission denied". The workers run as the tests' user instead.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"daemon off;\n{user}pid {folder}/nginx.pid;\nerror_log {folder}/nginx-error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {folder}/body;\n  proxy_temp_path {folder}/proxy;\n"
        f"  fastcgi_temp_path {folder}/fastcgi;\n  uwsgi_temp_path {folder}/uwsgi;\n"
        f"  scgi_temp_path {folder}/scgi;\n" + example + "\n}\n"
    )
    return conf


async def check_config(conf: Path) -> None:
    check = await asyncio.create_subprocess_exec(
        nginx_binary(), "-t", "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    _, err = await check.communicate()
    if check.returncode != 0:
        raise AssertionError(f"nginx -t refused the config: {err.decode()}")


async def start_nginx(conf: Path) -> asyncio.subprocess.Process:
    """nginx in the foreground with `conf` (checked first); the caller stops it."""
    await check_config(conf)
    return await asyncio.create_subprocess_exec(
        nginx_binary(), "-c", str(conf), stderr=asyncio.subprocess.DEVNULL
    )


async def stop_nginx(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()
