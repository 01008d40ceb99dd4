"""The image's boot-time network settings (image/rootfs/usr/lib/pitlink/pitlink-netconf), run here.

pitlink.conf is edited by hand on any laptop, so the script that turns it into systemd-networkd
and wpa_supplicant files must read it as the agent does (BOM, CRLF, comments, quotes), never
run any of it, and fall back to DHCP on whatever it cannot use. These tests need only bash.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETCONF = REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink" / "pitlink-netconf"


@dataclass
class Result:
    stdout: str
    stderr: str
    files: dict[str, str]

    @property
    def wired(self) -> str:
        return self.files["net/50-pitlink-wired.network"]


def run(tmp_path: Path, conf: str | bytes | None) -> Result:
    conf_path = tmp_path / "pitlink.conf"
    if isinstance(conf, str):
        conf_path.write_text(conf, encoding="utf-8")
    elif isinstance(conf, bytes):
        conf_path.write_bytes(conf)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PITLINK_CONF": str(conf_path),
        "PITLINK_NETWORK_DIR": str(tmp_path / "net"),
        "PITLINK_RUN_DIR": str(tmp_path / "run"),
    }
    done = subprocess.run(
        ["bash", str(NETCONF)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    files = {
        str(p.relative_to(tmp_path)): p.read_text()
        for p in sorted(tmp_path.glob("*/*"))
        if p.is_file()
    }
    return Result(done.stdout, done.stderr, files)


def test_no_file_means_dhcp_on_any_wired_interface(tmp_path: Path) -> None:
    r = run(tmp_path, None)
    assert set(r.files) == {"net/50-pitlink-wired.network"}
    assert "Name=en* eth*" in r.wired
    assert "DHCP=yes" in r.wired
    # The machine id is new at every boot on a read-only root: the MAC keeps the address.
    assert "ClientIdentifier=mac" in r.wired
    assert "no " in r.stdout


def test_windows_file_with_bom_and_crlf_gives_a_static_address(tmp_path: Path) -> None:
    conf = (
        "\ufeff# edited in Notepad\r\n"
        "CLOUD_URL=https://relay.example.com\r\n"
        "  static-address = '192.168.1.50/24'  \r\n"
        'STATIC_GATEWAY="192.168.1.1"\r\n'
        "STATIC_DNS=192.168.1.1, 9.9.9.9\r\n"
    ).encode("utf-8")
    r = run(tmp_path, conf)
    assert "Address=192.168.1.50/24\n" in r.wired
    assert "Gateway=192.168.1.1\n" in r.wired
    assert "DNS=192.168.1.1\nDNS=9.9.9.9\n" in r.wired
    assert "DHCP=yes" not in r.wired
    assert "\r" not in r.wired
    assert r.stderr == ""


def test_old_mac_line_endings_are_lines_too(tmp_path: Path) -> None:
    r = run(tmp_path, b"STATIC_ADDRESS=10.1.2.3/16\rSTATIC_GATEWAY=10.1.0.1\r")
    assert "Address=10.1.2.3/16\n" in r.wired
    assert "Gateway=10.1.0.1\n" in r.wired


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        ("STATIC_ADDRESS=192.168.1.50", "prefix length"),
        ("STATIC_ADDRESS=192.168.1.350/24", "prefix length"),
        ("STATIC_ADDRESS=192.168.1.50/33", "prefix length"),
        ("STATIC_ADDRESS=192.168.1.50/24\nSTATIC_GATEWAY=router", "STATIC_GATEWAY"),
        ("STATIC_ADDRESS=192.168.1.50/24\nSTATIC_DNS=1.1.1.1 dns.google", "STATIC_DNS"),
        ("STATIC_GATEWAY=192.168.1.1", "need STATIC_ADDRESS"),
    ],
)
def test_a_wrong_static_setting_falls_back_to_dhcp_and_says_why(
    tmp_path: Path, lines: str, complaint: str
) -> None:
    r = run(tmp_path, lines + "\n")
    assert "DHCP=yes" in r.wired
    assert "Address=" not in r.wired
    assert complaint in r.stderr


def test_wifi_gets_the_network_and_the_static_address(tmp_path: Path) -> None:
    conf = (
        'WIFI_SSID=Pits "5G"\n'
        'WIFI_PASSPHRASE=it\'s a "secret"\n'
        "wifi_country=gb\n"
        "STATIC_ADDRESS=192.168.4.9/24\n"
    )
    r = run(tmp_path, conf)
    wpa = r.files["run/wpa_supplicant.conf"]
    # The SSID in hex: no quoting problem whatever the network's name.
    ssid_hex = b'Pits "5G"'.hex()
    assert f"ssid={ssid_hex}\n" in wpa
    assert 'psk="it\'s a "secret""\n' in wpa
    assert "country=GB\n" in wpa
    assert (tmp_path / "run" / "wpa_supplicant.conf").stat().st_mode & 0o777 == 0o600
    wifi = r.files["net/50-pitlink-wifi.network"]
    assert "Name=wl*" in wifi
    assert "Address=192.168.4.9/24" in wifi
    # The cable keeps DHCP, and wins the default route when both are up.
    assert "DHCP=yes" in r.wired
    assert "RouteMetric=100" in r.wired


def test_open_network_and_raw_psk(tmp_path: Path) -> None:
    r = run(tmp_path, "WIFI_SSID=Venue Free WiFi\n")
    assert "key_mgmt=NONE" in r.files["run/wpa_supplicant.conf"]
    psk = "ab" * 32
    r = run(tmp_path, f"WIFI_SSID=x\nWIFI_PASSPHRASE={psk}\n")
    assert f"psk={psk}\n" in r.files["run/wpa_supplicant.conf"]


@pytest.mark.parametrize("passphrase", ["short", "x" * 64, "caf\u00e9 au lait"])
def test_an_impossible_passphrase_means_no_wifi(tmp_path: Path, passphrase: str) -> None:
    r = run(tmp_path, f"WIFI_SSID=Pits\nWIFI_PASSPHRASE={passphrase}\n")
    assert "run/wpa_supplicant.conf" not in r.files
    assert "net/50-pitlink-wifi.network" not in r.files
    assert "WIFI_PASSPHRASE" in r.stderr
    assert "DHCP=yes" in r.wired


def test_the_file_is_read_never_run(tmp_path: Path) -> None:
    # The script runs in tmp_path: any of these, if run, would leave the file "ran" there.
    conf = (
        "WIFI_SSID=$(touch ran)\nWIFI_PASSPHRASE=`touch ran`;touch ran\ntouch ran\n$(touch ran)=1\n"
    )
    r = run(tmp_path, conf)
    assert not (tmp_path / "ran").exists()
    wpa = r.files["run/wpa_supplicant.conf"]
    assert bytes.fromhex(wpa.split("ssid=")[1].split()[0]) == b"$(touch ran)"
    assert 'psk="`touch ran`;touch ran"\n' in wpa
    assert "line 3 is not KEY=VALUE" in r.stderr
    assert "is not a setting name" in r.stderr


def test_lines_it_cannot_read_are_skipped_not_fatal(tmp_path: Path) -> None:
    r = run(tmp_path, "[Network]\nSTATIC_ADDRESS=192.168.1.50/24\nDNS=1.2.3.4\n")
    assert "Address=192.168.1.50/24" in r.wired
    assert "DNS=1.2.3.4" not in r.wired
    assert "line 1 is not KEY=VALUE" in r.stderr


def test_a_later_line_wins_and_the_old_wifi_goes(tmp_path: Path) -> None:
    run(tmp_path, "WIFI_SSID=first\n")
    assert (tmp_path / "run" / "wpa_supplicant.conf").exists()
    r = run(tmp_path, "STATIC_ADDRESS=10.0.0.2/8\nSTATIC_ADDRESS=10.0.0.3/8\n")
    assert "Address=10.0.0.3/8" in r.wired
    # Wi-Fi removed from pitlink.conf: nothing of it is left from before.
    assert "run/wpa_supplicant.conf" not in r.files
    assert "net/50-pitlink-wifi.network" not in r.files
