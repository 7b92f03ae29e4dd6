"""MkDocs hooks: the pages' generated parts. The settings table comes from ``Settings`` itself
(``server.settings.markdown_table``, read from this checkout), so a new setting appears in the
docs with its flag, environment variable, default and help text, and no hand-kept copy can fall
behind."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SETTINGS_TABLE = "<!-- settings-table -->"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if SETTINGS_TABLE in markdown:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's server/, installed or not
        from server.settings import markdown_table

        markdown = markdown.replace(SETTINGS_TABLE, markdown_table())
    return markdown
