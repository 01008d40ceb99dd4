"""`cloud-relay keygen`, `token` and `serve`'s refusals, as a person at a shell meets them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from cloud.cli import main
from cloud.keys import KeySet

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


def test_serve_without_jwks_exits_2_with_a_clear_line() -> None:
    got = run("serve", "--port", "0")
    assert got.returncode == 2
    assert "Traceback" not in got.stderr
    last = got.stderr.strip().splitlines()[-1]
    assert "--jwks" in last and "required" in last
    assert got.stdout == ""


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_unknown_or_missing_command_exits_2(args: list[str], capsys) -> None:
    code, out, err = run_main(args, capsys)
    assert code == 2
    assert "usage: cloud-relay" in out + err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert "keygen" in out and "token" in out and "serve" in out
