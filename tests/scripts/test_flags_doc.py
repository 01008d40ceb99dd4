"""The docs' flag tables, `--help` and the settings' declarations say the same thing.

The tables in docs/running-a-relay.md and docs/pits-agent.md are made from the declarations
by scripts/flags_doc.py; a change to a setting without running it fails here.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.config import build_parser as relay_parser
from pitlink_testkit import flags_doc
from pitlink_testkit.flags_doc import COMMAND, PAGES, ROOT, generated, tables, unplaced
from pits_appliance.config import build_parser as agent_parser

pytestmark = pytest.mark.timeout(60)

ROW = re.compile(r"^\| `(--[a-z0-9-]+)[^`]*` \| (.+?) \| (.+) \|$")


def doc_rows() -> dict[str, dict[str, str]]:
    """Each table's rows from the pages as they are: flag -> its default as shown."""
    found: dict[str, dict[str, str]] = {}
    for page in PAGES:
        for name, body in re.findall(
            r"<!-- flags: ([^;]+);[^>]*-->\n(.*?)<!-- /flags -->",
            page.read_text(encoding="utf-8"),
            re.DOTALL,
        ):
            rows = (ROW.match(line) for line in body.splitlines())
            found[name] = {m.group(1): m.group(2) for m in rows if m}
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_tables_are_made_from_the_declarations(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text == generated(page), (
        f"the flag tables in {page.relative_to(ROOT)} differ from the declarations; "
        f"regenerate them with: {COMMAND}"
    )


def test_every_table_has_a_place_in_the_docs() -> None:
    assert unplaced() == [], f"add the markers for these tables, then run {COMMAND}"
    assert set(doc_rows()) == set(tables())


@pytest.mark.parametrize(
    ("parser", "names"),
    [
        (relay_parser(), ("cloud-relay serve", "cloud-relay serve, several replicas on Redis")),
        (agent_parser(), ("pits-agent",)),
    ],
    ids=["cloud-relay serve", "pits-agent"],
)
def test_help_says_every_flag_and_its_default_as_the_docs_do(
    parser: argparse.ArgumentParser, names: tuple[str, ...]
) -> None:
    documented = {flag: shown for name in names for flag, shown in doc_rows()[name].items()}
    actions = {a.option_strings[0]: a for a in parser._actions if a.dest != "help"}
    assert sorted(actions) == sorted(documented)
    shown_help = " ".join(parser.format_help().split())
    for flag, shown in documented.items():
        default = shown.replace("`", "")
        said = str(actions[flag].help).replace("%%", "%")
        assert said.endswith((f"(default {default})", f"(default: {default})", "(required)"))
        if default == "(required)":
            assert said.endswith(default)
        assert " ".join(said.split()) in shown_help


def test_check_finds_a_stale_page_and_writing_mends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copies = []
    for page in PAGES:
        copy = tmp_path / "docs" / page.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(page, copy)
        copies.append(copy)
    stale = copies[0].read_text(encoding="utf-8").replace("| `8` |", "| `9` |", 1)
    copies[0].write_text(stale, encoding="utf-8")
    monkeypatch.setattr(flags_doc, "ROOT", tmp_path)
    monkeypatch.setattr(flags_doc, "PAGES", tuple(copies))
    assert flags_doc.main(["--check"]) == 1
    assert f"docs/{copies[0].name}: flag tables differ; run {COMMAND}" in capsys.readouterr().err
    assert flags_doc.main([]) == 0
    assert flags_doc.main(["--check"]) == 0
    assert copies[0].read_text(encoding="utf-8") == PAGES[0].read_text(encoding="utf-8")


def test_the_command_runs_as_written() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/flags_doc.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""
