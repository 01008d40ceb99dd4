"""Write the flag tables in docs/ from the settings' declarations (the config dataclasses).

    .venv/bin/python scripts/flags_doc.py           rewrite the tables in place
    .venv/bin/python scripts/flags_doc.py --check   only say which page differs (exit 1)

A table sits between `<!-- flags: NAME; ... -->` and `<!-- /flags -->` in a page; everything
else on the page is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloud.config import REPLICAS, CloudConfig
from pits_appliance.config import AgentConfig
from wire.settings import fill_tables, flag_table, settings_of

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python scripts/flags_doc.py"
PAGES = (ROOT / "docs" / "running-a-relay.md", ROOT / "docs" / "pits-agent.md")


def tables() -> dict[str, str]:
    """Each table by the name its markers carry."""
    relay, agent = settings_of(CloudConfig), settings_of(AgentConfig)
    return {
        "cloud-relay serve": flag_table(relay),
        f"cloud-relay serve, {REPLICAS}": flag_table(relay, REPLICAS),
        "pits-agent": flag_table(agent),
    }


def generated(page: Path) -> str:
    """The page as it should be: its tables made from the declarations."""
    return fill_tables(page.read_text(encoding="utf-8"), tables())


def unplaced() -> list[str]:
    """Tables that no page has markers for."""
    text = "".join(page.read_text(encoding="utf-8") for page in PAGES)
    return [name for name in tables() if f"<!-- flags: {name};" not in text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    check = parser.parse_args(argv).check
    if missing := unplaced():
        print(f"no page has markers for the table {missing[0]!r}", file=sys.stderr)
        return 1
    stale = [page for page in PAGES if generated(page) != page.read_text(encoding="utf-8")]
    for page in stale:
        if check:
            print(f"{page.relative_to(ROOT)}: flag tables differ; run {COMMAND}", file=sys.stderr)
        else:
            page.write_text(generated(page), encoding="utf-8")
            print(f"{page.relative_to(ROOT)}: flag tables written")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
