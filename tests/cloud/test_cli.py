"""`cloud-relay keygen`, `token` and `serve`'s refusals, as a person at a shell meets them."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from cloud.cli import main
from cloud.keys import KeySet, keygen

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITLINK_")}
    return subprocess.run(
        [sys.executable, "-m", "cloud", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        main(args)
    out, err = capsys.readouterr()
    code = caught.value.code
    return (0 if code is None else int(code)), out, err


def test_keygen_and_token_as_commands(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    made = run("keygen", "--jwks", str(jwks), "--kid", "first")
    assert made.returncode == 0, made.stderr
    assert "first" in made.stdout
    assert stat.S_IMODE(jwks.stat().st_mode) == 0o600

    issued = run("token", "--jwks", str(jwks), "--sub", "club-42", "--role", "pits", "--ttl", "600")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert len(issued.stdout.strip().splitlines()) == 1
    claims = KeySet.load(jwks).verify(token, role="pits")
    assert claims["sub"] == "club-42"
    assert claims["exp"] - claims["iat"] == 600
    assert jwt.get_unverified_header(token)["kid"] == "first"


def test_keygen_via_main_rotates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jwks = tmp_path / "jwks.json"
    assert run_main(["keygen", "--jwks", str(jwks), "--kid", "old"], capsys)[0] == 0
    code, _, _ = run_main(["token", "--jwks", str(jwks), "--sub", "p1"], capsys)
    assert code == 0
    code, out, _ = run_main(["keygen", "--jwks", str(jwks), "--kid", "new"], capsys)
    assert code == 0 and "new" in out
    assert KeySet.load(jwks).kids == ["new", "old"]
    code, out, _ = run_main(["token", "--jwks", str(jwks), "--sub", "p1"], capsys)
    assert jwt.get_unverified_header(out.strip())["kid"] == "new"


def test_key_commands_take_the_key_set_from_the_environment(tmp_path: Path) -> None:
    """PITLINK_JWKS, which serve reads, names the key set for keygen, token and revoke too
    (the container image sets it); without it or --jwks each says what it needs."""
    jwks = tmp_path / "jwks.json"

    def with_env(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PITLINK_")}
        return subprocess.run(
            [sys.executable, "-m", "cloud", *args],
            cwd=REPO,
            env={**env, "PITLINK_JWKS": str(jwks)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert with_env("keygen", "--kid", "envkey").returncode == 0
    issued = with_env("token", "--sub", "club-42")
    assert issued.returncode == 0, issued.stderr
    assert KeySet.load(jwks).verify(issued.stdout.strip(), role="pits")["sub"] == "club-42"
    revoked = with_env("revoke", "--sub", "club-42")
    assert revoked.returncode == 0, revoked.stderr
    assert (tmp_path / "jwks.json.revoked").is_file()
    missing = run("token", "--sub", "club-42")
    assert missing.returncode == 2
    assert "--jwks" in missing.stderr


@pytest.mark.parametrize("role", ["pits", "admin"])
def test_token_via_main(tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str) -> None:
    jwks = tmp_path / "jwks.json"
    run_main(["keygen", "--jwks", str(jwks)], capsys)
    code, out, err = run_main(
        ["token", "--jwks", str(jwks), "--sub", "alice", "--role", role, "--ttl", "3600"], capsys
    )
    assert code == 0, err
    claims = KeySet.load(jwks).verify(out.strip(), role=role)
    assert (claims["sub"], claims["role"]) == ("alice", role)
    assert claims["exp"] - claims["iat"] == 3600


def test_token_defaults_to_a_pits_token_for_a_year(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = tmp_path / "jwks.json"
    run_main(["keygen", "--jwks", str(jwks)], capsys)
    _, out, _ = run_main(["token", "--jwks", str(jwks), "--sub", "club-1"], capsys)
    claims = KeySet.load(jwks).verify(out.strip(), role="pits")
    assert claims["exp"] - claims["iat"] == 365 * 86400


def test_bad_role_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jwks = tmp_path / "jwks.json"
    run_main(["keygen", "--jwks", str(jwks)], capsys)
    code, out, err = run_main(
        ["token", "--jwks", str(jwks), "--sub", "x", "--role", "root"], capsys
    )
    assert code == 2
    assert out == ""
    assert "--role" in err and "root" in err


def test_token_without_a_key_set_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["token", "--jwks", str(tmp_path / "missing.json"), "--sub", "x"], capsys
    )
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "missing.json" in err


def test_keygen_with_a_taken_kid_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = tmp_path / "jwks.json"
    run_main(["keygen", "--jwks", str(jwks), "--kid", "k1"], capsys)
    code, _, err = run_main(["keygen", "--jwks", str(jwks), "--kid", "k1"], capsys)
    assert code == 2
    assert "k1" in err
    assert KeySet.load(jwks).kids == ["k1"]


def test_serve_without_jwks_exits_2_with_one_clear_line() -> None:
    got = run("serve", "--port", "0")
    assert got.returncode == 2
    assert "Traceback" not in got.stderr
    [line] = got.stderr.strip().splitlines()
    assert "--jwks" in line and "required" in line and "cloud-relay keygen" in line
    assert got.stdout == ""


def test_serve_with_a_missing_key_set_says_how_to_make_one(tmp_path: Path) -> None:
    missing = tmp_path / "jwks.json"
    got = run("serve", "--port", "0", "--jwks", str(missing))
    assert got.returncode == 2
    [line] = got.stderr.strip().splitlines()
    assert line == (
        f"cloud-relay: the key set {missing} does not exist: "
        f"create it with `cloud-relay keygen --jwks {missing}`"
    )


def test_serve_with_a_damaged_key_set_names_it(tmp_path: Path) -> None:
    damaged = tmp_path / "jwks.json"
    damaged.write_text("{not json")
    got = run("serve", "--port", "0", "--jwks", str(damaged))
    assert got.returncode == 2
    [line] = got.stderr.strip().splitlines()
    assert line.startswith(f"cloud-relay: the key set {damaged} is not a valid JWKS file")


def test_serve_on_a_taken_port_says_so(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "k")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        got = run("serve", "--port", str(port), "--jwks", str(jwks))
    assert got.returncode == 2
    last = got.stderr.strip().splitlines()[-1]
    assert last == f"cloud-relay: cannot listen on 127.0.0.1:{port}: " + (
        "the port is taken (another relay, or another program?)"
    )


def test_a_bad_flag_value_is_one_line() -> None:
    got = run("serve", "--jwks", "x", "--ttl", "soon")
    assert got.returncode == 2
    [line] = got.stderr.strip().splitlines()
    assert "--ttl" in line and "PATTERN=SECONDS" in line


def test_missing_command_prints_the_help_and_exits_2(capsys) -> None:
    code, _, err = run_main([], capsys)
    assert code == 2
    assert "usage: cloud-relay COMMAND" in err


def test_unknown_command_exits_2_naming_the_commands(capsys) -> None:
    code, _, err = run_main(["frobnicate"], capsys)
    assert code == 2
    assert "'frobnicate'" in err and "serve, keygen, token, revoke or bundle" in err


def test_help_describes_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for command in ("serve", "keygen", "token", "revoke"):
        assert f"\n  {command} " in out
    assert "PITLINK_" in out


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cloud.config import SETTINGS

    code, out, _ = run_main(["serve", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: cloud-relay serve")
    text = " ".join(out.split())
    for setting in SETTINGS:
        assert f" {setting.option} " in text
        shown = setting.default_shown.replace("`", "")
        assert (
            f"(default {shown})" in text or f"(default: {shown})" in text or (shown == "(required)")
        )
    assert "--port PORT port to listen on (default 8080)" in text
    assert "--jwks JWKS the key set file (JWKS) that verifies tokens (required)" in text
    assert "several replicas on Redis: --redis-url REDIS_URL" in text


def test_bundle_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bundles"
    source = tmp_path / "pitlink-arm64-0.2.0+20261130T0900.raucb"
    source.write_bytes(b"a signed bundle")
    base = ["bundle", "--bundle-dir", str(folder)]
    code, out, err = run_main([*base, "add", str(source)], capsys)
    assert code == 0, err
    bundle_id = out.split()[1].rstrip(":")
    assert "version 0.2.0+20261130T0900 for arm64, 15 bytes" in out
    code, out, _ = run_main([*base, "offer", bundle_id, "canary", "club-7"], capsys)
    assert code == 0 and "offered to canary, club-7" in out
    code, out, _ = run_main([*base, "list"], capsys)
    assert out.startswith(f"{bundle_id}  0.2.0+20261130T0900  arm64  15 bytes")
    assert "offered to: canary, club-7" in out
    code, out, _ = run_main([*base, "withdraw", "club-7"], capsys)
    assert "withdrawn from club-7" in out
    # A rollout: started with the wave named, listed, refused twice, cancelled, started again.
    code, out, err = run_main(
        [*base, "rollout", bundle_id, "--wave", "2", "--first", "canary"], capsys
    )
    assert code == 0, err
    assert out.strip() == (
        f"rollout of {bundle_id} (0.2.0+20261130T0900): running, wave not chosen yet of 2; "
        "0 boxes in it, 0 good"
    )
    code, out, _ = run_main([*base, "list"], capsys)
    assert f"    rollout of {bundle_id} (0.2.0+20261130T0900): running" in out
    code, _, err = run_main([*base, "rollout", bundle_id, "--wave", "1"], capsys)
    assert code == 2 and "being rolled out already (running)" in err
    code, _, err = run_main([*base, "resume", bundle_id], capsys)
    assert code == 2 and f"no halted rollout of bundle {bundle_id}" in err
    code, out, _ = run_main([*base, "cancel", bundle_id], capsys)
    # The bundle stops going out: its offers not acted on are withdrawn, the rollout's or not.
    assert code == 0 and ": cancelled," in out and "offers withdrawn: canary" in out
    code, out, _ = run_main([*base, "rollout", bundle_id, "--wave", "1"], capsys)
    assert code == 0 and "running" in out
    code, out, _ = run_main([*base, "offer", bundle_id, "club-8"], capsys)
    code, out, _ = run_main([*base, "remove", bundle_id], capsys)
    assert code == 0 and "offers withdrawn: 1" in out
    assert run_main([*base, "list"], capsys)[1] == ""
    assert json.loads((folder / "rollouts.json").read_text()) == {}


def test_bundle_commands_refuse_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bundles"
    odd = tmp_path / "bundle.bin"
    odd.write_bytes(b"x")
    base = ["bundle", "--bundle-dir", str(folder)]
    code, _, err = run_main([*base, "add", str(odd)], capsys)
    assert code == 2 and "cannot tell the version and arch" in err
    code, _, err = run_main([*base, "add", str(odd), "--version", "1", "--arch", "sparc"], capsys)
    assert code == 2 and "arch 'sparc'" in err
    code, _, err = run_main([*base, "offer", "0123456789abcdef", "p1"], capsys)
    assert code == 2 and "no bundle 0123456789abcdef" in err
    code, _, err = run_main([*base, "remove", "../../etc"], capsys)
    assert code == 2 and "is not a bundle id" in err
    code, _, err = run_main(["bundle", "list"], capsys)
    assert code == 2 and "--bundle-dir" in err
    made = run(
        "bundle",
        "--bundle-dir",
        str(folder),
        "add",
        str(odd),
        "--version",
        "1.0",
        "--arch",
        "amd64",
    )
    assert made.returncode == 0, made.stderr


@pytest.mark.parametrize("ttl", ["-100", "0", "nan", "soon"])
def test_a_token_that_would_be_born_expired_is_refused(tmp_path: Path, ttl: str) -> None:
    """Run as the operator runs it: one line on the terminal, exit 2, and no token printed."""
    keygen(tmp_path / "jwks.json", "k1")
    done = run("token", "--jwks", str(tmp_path / "jwks.json"), "--sub", "club-1", "--ttl", ttl)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "--ttl" in line
    assert ("1 or more" in line) if ttl != "soon" else ("not a number of seconds" in line)


def test_a_bundle_folder_that_is_missing_is_said_and_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for verb in (["list"], ["withdraw", "club-1"], ["cancel", "0123456789abcdef"]):
        done = run("bundle", "--bundle-dir", str(missing), *verb)
        assert done.returncode == 2, verb
        assert done.stdout == ""
        assert done.stderr.strip() == (
            f"cloud-relay: the bundle folder {missing} does not exist: give the relay's "
            "--bundle-dir (`cloud-relay bundle add FILE` creates it)"
        )
        assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = run("bundle", "--bundle-dir", str(a_file), "list")
    assert done.returncode == 2 and "is not a folder" in done.stderr


def test_a_missing_bundle_dir_flag_is_a_whole_sentence() -> None:
    done = run("bundle", "list")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cloud-relay: --bundle-dir (or PITLINK_BUNDLE_DIR) is required: the folder the relay "
        "keeps its bundles in, as given to its own --bundle-dir"
    )
