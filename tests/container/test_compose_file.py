"""deploy/compose.yaml and deploy/container/Containerfile read as Compose and the relay read
them: every setting one of the relay's own, every value one it takes, the replicas where
deploy/nginx-pitlink.conf looks for them. (Running them is tests/container/
test_relay_container.py: the registry's nginx and Redis images cannot be pulled here.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from container_tools import REPO, version

from cloud.config import SETTINGS, config_from_args
from pitlink_testkit.needs import need

DEPLOY = REPO / "deploy"
PITLINK_ENV = re.compile(r"\bPITLINK_[A-Z0-9_]+")


def compose() -> dict[str, Any]:
    """The file as a Compose tool reads it (YAML with its merge keys), through Debian's PyYAML:
    the relay's own venv has no YAML reader."""
    python = shutil.which("python3", path="/usr/bin")
    need(python is not None, "no /usr/bin/python3")
    script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    done = subprocess.run(
        [str(python), "-c", script, str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    need("No module named 'yaml'" not in done.stderr, "python3-yaml: ./scripts/test installs it")
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert isinstance(parsed, dict)
    return parsed


@pytest.mark.timeout(30)
def test_compose_runs_two_replicas_on_one_redis_behind_the_nginx_example() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "relay-a", "relay-b", "nginx"}
    assert {s["network_mode"] for s in services.values()} == {"host"}

    redis = services["redis"]["command"]
    redis_port = redis[redis.index("--port") + 1]
    assert redis[redis.index("--bind") + 1] == "127.0.0.1"
    # Bounded, as the relay asks of a Redis it shares.
    assert redis[redis.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in redis

    nginx = (DEPLOY / "nginx-pitlink.conf").read_text()
    upstreams = sorted(int(p) for p in re.findall(r"server 127\.0\.0\.1:(\d+) max_fails", nginx))
    volumes = services["nginx"]["volumes"]
    assert "./nginx-pitlink.conf:/etc/nginx/conf.d/default.conf:ro" in volumes

    ports, nodes = [], set()
    for name in ("relay-a", "relay-b"):
        relay = services[name]
        assert relay["image"] == f"pitlink-relay:{version()}"
        assert relay["read_only"] is True
        assert relay["volumes"] == ["pitlink:/var/lib/pitlink"]
        env = {key: str(value) for key, value in relay["environment"].items()}
        # The relay takes every value as it is, from its environment.
        config = config_from_args([], env={**env, "PITLINK_JWKS": "/var/lib/pitlink/jwks.json"})
        assert config.redis_url == f"redis://127.0.0.1:{redis_port}/0"
        assert config.host == "127.0.0.1"
        assert config.trusted_proxy == ("127.0.0.1",)
        assert config.admin_host is not None, "the admin page needs an origin of its own"
        # Compose stops a replica only after it has drained.
        grace = int(relay["stop_grace_period"].rstrip("s"))
        assert grace > config.grace_period
        ports.append(config.port)
        nodes.add(config.node_id)
    assert sorted(ports) == upstreams
    assert len(nodes) == 2


@pytest.mark.timeout(30)
def test_every_pitlink_variable_is_a_setting_of_the_relay() -> None:
    known = {setting.env for setting in SETTINGS}
    for name in ("compose.yaml", "container/Containerfile"):
        used = set(PITLINK_ENV.findall((DEPLOY / name).read_text()))
        assert used, name
        assert used <= known, f"{name}: not settings of cloud-relay serve: {used - known}"
