"""For the tests that drive pages in Chromium (Playwright)."""

from __future__ import annotations

from typing import Any


def watch_errors(page: Any, *, accept_dialogs: bool = True) -> Any:
    """The page's script errors and console errors collect in `page.errors` (a test asserts it
    empty); every confirmation it asks is answered yes."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if accept_dialogs:
        page.on("dialog", lambda dialog: dialog.accept())
    page.errors = errors
    return page
