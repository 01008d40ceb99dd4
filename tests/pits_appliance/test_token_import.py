"""A TOKEN in pitlink.conf lands in the state directory once; renewals are kept there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.keys import KeySet, keygen
from pits_appliance import ConfigError
from pits_appliance.agent import Agent
from pits_appliance.config import load_config


@pytest.fixture
def keys(tmp_path: Path) -> KeySet:
    keygen(tmp_path / "jwks.json", "k")
    return KeySet.load(tmp_path / "jwks.json")


def conf(tmp_path: Path, token: str, extra: str = "") -> Path:
    path = tmp_path / "pitlink.conf"
    path.write_text(
        "# the organiser's file\n"
        "CLOUD_URL=https://relay.example\n"
        f"TOKEN={token}\n"
        f"STATE_DIR={tmp_path / 'state'}\n"
        "WIFI_SSID=Venue Guest\nWIFI_PASSPHRASE='s3cret pass'\n" + extra
    )
    return path


def test_token_is_taken_once_and_renewals_are_kept(tmp_path: Path, keys: KeySet) -> None:
    first = keys.issue(sub="club-7", role="pits", ttl=600)
    config = load_config(["--config", str(conf(tmp_path, first))], env={})
    assert config.token_file == tmp_path / "state" / "token"
    Agent(config).import_token()
    assert config.token_file.read_text().strip() == first
    assert (config.token_file.stat().st_mode & 0o777) == 0o600
    # A renewal over the link replaces the file; the next start must not undo it.
    renewed = keys.issue(sub="club-7", role="pits", ttl=900)
    config.token_file.write_text(renewed + "\n")
    Agent(config).import_token()
    assert config.token_file.read_text().strip() == renewed
    # The organiser pastes a new token into pitlink.conf: that one is taken.
    pasted = keys.issue(sub="club-7", role="pits", ttl=1200)
    config = load_config(["--config", str(conf(tmp_path, pasted))], env={})
    Agent(config).import_token()
    assert config.token_file.read_text().strip() == pasted


def test_a_garbage_token_is_refused_and_replaces_nothing(tmp_path: Path, keys: KeySet) -> None:
    config = load_config(["--config", str(conf(tmp_path, "not-a-token"))], env={})
    with pytest.raises(ConfigError, match="not a valid token"):
        Agent(config).import_token()
    assert not config.token_file.exists()


def test_image_settings_are_accepted_and_typos_are_not(tmp_path: Path, keys: KeySet) -> None:
    token = keys.issue(sub="club-7", role="pits", ttl=600)
    load_config(
        ["--config", str(conf(tmp_path, token, "STATIC_ADDRESS=192.168.1.50/24\n"))], env={}
    )
    with pytest.raises(ConfigError, match="CLOUD_ULR"):
        load_config(["--config", str(conf(tmp_path, token, "CLOUD_ULR=x\n"))], env={})


def test_empty_token_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOKEN is empty"):
        load_config(["--config", str(conf(tmp_path, ""))], env={})


def test_print_pits_id_for_the_image_scripts(tmp_path: Path, keys: KeySet, capsys) -> None:
    from pits_appliance.cli import main

    token = keys.issue(sub="club-7", role="pits", ttl=600)
    with pytest.raises(SystemExit) as done:
        main(["--config", str(conf(tmp_path, token)), "--print-pits-id"])
    assert done.value.code == 0
    assert capsys.readouterr().out == "club-7\n"
    assert not (tmp_path / "state" / "token").exists()  # printing changes nothing
