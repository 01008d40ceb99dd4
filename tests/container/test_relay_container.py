"""The relay's container image as an operator runs it: keys made into a volume, the relay
serving a real agent from the host, two replicas on one Redis behind deploy/'s nginx, a
read-only root, a user that is not root, and SIGTERM."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.httpclient
from container_tools import REPO

from pitlink_testkit import podman
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.nginx import nginx_config, start_nginx, stop_nginx
from pitlink_testkit.redis_server import RedisServer
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.config import AgentConfig
from wire.canonical import canonical_json

pytestmark = pytest.mark.image
# Each test's own time, past the image's build (a session fixture with its own bound).
TIMEOUT = pytest.mark.timeout(120, func_only=True)
UID = 10001
# The image as this build makes it: Debian's minbase, python3 and the relay's venv. A bound
# the tests hold it to, so that it only grows on purpose.
MAX_IMAGE_BYTES = 160_000_000


@pytest.fixture
async def http() -> AsyncIterator[tornado.httpclient.AsyncHTTPClient]:
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


async def get(
    http: tornado.httpclient.AsyncHTTPClient, url: str
) -> tornado.httpclient.HTTPResponse | None:
    try:
        return await http.fetch(url, raise_error=False, request_timeout=5)
    except OSError:
        return None


async def serving(http: tornado.httpclient.AsyncHTTPClient, port: int, name: str) -> None:
    async def up() -> bool:
        got = await get(http, f"http://127.0.0.1:{port}/healthz")
        return got is not None and got.code == 200

    await wait_for(up, timeout=30, what=f"the relay in {name} to answer /healthz")


def agent_config(tmp: Path, token: str, port: int, sim: Simulator) -> AgentConfig:
    token_file = tmp / "token"
    token_file.write_text(token)
    return AgentConfig(
        cloud_url=f"http://127.0.0.1:{port}",
        token_file=token_file,
        fpvtrackside=sim.url,
        status_host="127.0.0.1",
        status_port=0,
        reconnect_base=0.05,
        reconnect_cap=0.5,
        status_pin="428571",
        internet_check_url=None,
    )


def keys_and_token(containers: podman.Containers, volume: str, pits_id: str) -> str:
    made = containers.once(volume, "cloud-relay", "keygen")
    assert made.returncode == 0, made.stderr
    issued = containers.once(volume, "cloud-relay", "token", "--sub", pits_id)
    assert issued.returncode == 0, issued.stderr
    return issued.stdout.strip()


@TIMEOUT
def test_the_image_file_and_its_settings(relay_image: str) -> None:
    version = relay_image.split(":", 1)[1]
    archive = REPO / "dist" / f"pitlink-relay-{version}.tar"
    # docker-archive, as `docker load` reads it: one image, named as Docker names
    # pitlink-relay:VERSION, its config and its layers in the file.
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    assert [m["RepoTags"] for m in manifest] == [[f"docker.io/library/{relay_image}"]]
    assert manifest[0]["Config"] in names
    assert all(layer in names for layer in manifest[0]["Layers"])
    loaded = podman.podman("load", "-q", "-i", str(archive), timeout=120)
    assert relay_image in loaded.stdout

    image = podman.inspect(relay_image, "image")
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Volumes"] == {"/var/lib/pitlink": {}}
    assert config["Cmd"] == ["cloud-relay", "serve"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.title"] == "Pitlink relay"
    assert labels["org.opencontainers.image.source"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PITLINK_JWKS"] == "/var/lib/pitlink/jwks.json"
    assert env["PITLINK_STATE_DIR"] == "/var/lib/pitlink"
    assert env["PITLINK_HOST"] == "0.0.0.0"
    assert "/healthz" in " ".join(image["Healthcheck"]["Test"])
    assert image["Size"] < MAX_IMAGE_BYTES, f"the image grew to {image['Size']} bytes"

    # Slim: no compiler, no pip, no package lists, no manuals; and the relay's tornado.
    found = podman.podman(
        "run",
        "--rm",
        *podman.run_flags(),
        relay_image,
        "sh",
        "-c",
        "for f in /usr/bin/gcc /usr/bin/cc /usr/bin/pip3 /opt/pitlink/bin/pip; do"
        " [ -e $f ] && echo $f; done; find /usr/share/man /usr/share/doc -type f -name '*.gz';"
        " ls /var/lib/apt/lists | grep -v -x -e partial -e lock;"
        " python3 -c 'import tornado; print(tornado.version_info >= (6, 4))'",
    )
    assert found.stdout == "True\n", found.stdout


@TIMEOUT
def test_key_commands_write_the_volume_as_the_relays_user(
    containers: podman.Containers,
) -> None:
    volume = containers.volume()
    assert containers.once(volume, "id", "-u").stdout.strip() == str(UID)
    made = containers.once(volume, "cloud-relay", "keygen", "--kid", "first")
    assert made.returncode == 0, made.stderr
    assert "first" in made.stdout
    token = containers.once(volume, "cloud-relay", "token", "--sub", "club-42")
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
    revoked = containers.once(volume, "cloud-relay", "revoke", "--sub", "club-7")
    assert revoked.returncode == 0, revoked.stderr
    listed = containers.once(volume, "cloud-relay", "bundle", "list")
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr

    # What they wrote is in the volume, owned by the relay's user; the key set only for it.
    folder = Path(podman.inspect(volume, "volume")["Mountpoint"])
    written = {p.name: p.stat() for p in folder.iterdir()}
    assert set(written) == {"jwks.json", "jwks.json.revoked", "bundles"}
    assert {(s.st_uid, s.st_gid) for s in written.values()} == {(UID, UID)}
    assert written["jwks.json"].st_mode & 0o777 == 0o600
    assert folder.stat().st_uid == UID and folder.stat().st_mode & 0o777 == 0o700
    assert json.loads((folder / "jwks.json").read_text())["keys"][0]["kid"] == "first"

    # A mistake is told as such, on stderr, with the relay's words.
    wrong = containers.once(volume, "cloud-relay", "token")
    assert wrong.returncode == 2 and "--sub" in wrong.stderr


@TIMEOUT
async def test_an_agent_on_the_host_through_the_containerized_relay(
    containers: podman.Containers,
    http: tornado.httpclient.AsyncHTTPClient,
    sim: Simulator,
    tmp_path: Path,
) -> None:
    volume = containers.volume()
    token = keys_and_token(containers, volume, "club-42")
    port = free_port()
    name = containers.start(volume, env={"PITLINK_PORT": str(port)})
    await serving(http, port, name)
    # The image's own health check, as podman runs it.
    assert podman.podman("healthcheck", "run", name, check=False).returncode == 0
    # Process 1 is the relay itself: no init in between, SIGTERM goes straight to it.
    cmdline = podman.podman("exec", name, "cat", "/proc/1/cmdline").stdout
    assert "cloud-relay" in cmdline and "serve" in cmdline

    agent = Agent(agent_config(tmp_path, token, port, sim))
    await agent.start()
    try:
        await wait_for(lambda: agent.state.ws_connected, timeout=20, what="the agent to connect")
        path = f"{sim.event_path}/Pilots.json"
        raw = (sim.root / path.lstrip("/")).read_bytes()
        got = await get(http, f"http://127.0.0.1:{port}/pits/club-42{path}")
        assert got is not None and got.code == 200, got
        assert got.body == canonical_json(json.loads(raw))
        health = await get(http, f"http://127.0.0.1:{port}/healthz")
        assert health is not None and json.loads(health.body)["connections"] == 1
    finally:
        await agent.stop()
    # The relay wrote nothing outside its volume: the root is read-only, and its user's.
    assert podman.inspect(name)["HostConfig"]["ReadonlyRootfs"] is True
    assert podman.podman("exec", name, "id", "-u").stdout.strip() == str(UID)


@TIMEOUT
async def test_sigterm_drains_and_exits_0_within_the_grace_period(
    containers: podman.Containers,
    http: tornado.httpclient.AsyncHTTPClient,
    sim: Simulator,
    tmp_path: Path,
) -> None:
    volume = containers.volume()
    token = keys_and_token(containers, volume, "club-42")
    port = free_port()
    grace = 3.0
    name = containers.start(
        volume, env={"PITLINK_PORT": str(port), "PITLINK_GRACE_PERIOD": str(grace)}
    )
    await serving(http, port, name)
    agent = Agent(agent_config(tmp_path, token, port, sim))
    await agent.start()
    try:
        await wait_for(lambda: agent.state.ws_connected, timeout=20, what="the agent to connect")
        started = time.monotonic()
        # SIGTERM, and SIGKILL only after 30 s: the relay must be gone long before.
        podman.podman("stop", "-t", "30", name, timeout=60)
        took = time.monotonic() - started
        await wait_for(
            lambda: not agent.state.ws_connected, timeout=10, what="the agent to see it go"
        )
    finally:
        await agent.stop()
    state = podman.inspect(name)["State"]
    assert state["ExitCode"] == 0, podman.logs(name)
    assert took < grace + 5, f"the relay took {took:.1f} s to stop"
    lines = [json.loads(line) for line in podman.logs(name).splitlines() if line.startswith("{")]
    assert any(line["event"] == "relay stopping" for line in lines)
    assert not [line for line in lines if line["level"] == "ERROR"]


@TIMEOUT
async def test_two_replicas_on_one_redis_behind_nginx(
    containers: podman.Containers,
    http: tornado.httpclient.AsyncHTTPClient,
    sim: Simulator,
    tmp_path: Path,
) -> None:
    """deploy/compose.yaml's layout: two replicas of the image on the host's network sharing
    one Redis and one volume, deploy/nginx-pitlink.conf in front (Debian's nginx and
    redis-server here, as the registry's images cannot be pulled)."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    proxy = None
    try:
        volume = containers.volume()
        token = keys_and_token(containers, volume, "club-42")
        ports = {"a": free_port(), "b": free_port()}
        for node, port in ports.items():
            env = {
                "PITLINK_PORT": str(port),
                "PITLINK_HOST": "127.0.0.1",
                "PITLINK_REDIS_URL": redis.url,
                "PITLINK_NODE_ID": node,
                "PITLINK_TRUSTED_PROXY": "127.0.0.1",
            }
            name = containers.start(volume, env=env)
            await serving(http, port, name)
        front = free_port()
        proxy = await start_nginx(
            nginx_config(tmp_path, upstreams=list(ports.values()), plain=front, tls=0)
        )

        agent = Agent(agent_config(tmp_path, token, ports["a"], sim))
        await agent.start()
        try:
            await wait_for(lambda: agent.state.ws_connected, timeout=20, what="the agent")

            async def ready(port: int) -> bool:
                got = await get(http, f"http://127.0.0.1:{port}/readyz")
                return got is not None and json.loads(got.body).get("redis") == "up"

            for port in ports.values():
                await wait_for(lambda p=port: ready(p), timeout=20, what="Redis up on a replica")
            path = f"{sim.event_path}/Pilots.json"
            expected = canonical_json(json.loads((sim.root / path.lstrip("/")).read_bytes()))
            # The box is on replica a: b fetches through Redis, and nginx reaches either.
            for base in (f"http://127.0.0.1:{ports['b']}", f"http://127.0.0.1:{front}"):
                got = await get(http, f"{base}/pits/club-42{path}")
                assert got is not None and got.code == 200, (base, got)
                assert got.body == expected
        finally:
            await agent.stop()
    finally:
        if proxy is not None:
            await stop_nginx(proxy)
        redis.stop()
