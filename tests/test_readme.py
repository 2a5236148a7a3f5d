"""The README says what the code does: every setting in its table, every ChatStream argument in its list."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import get_type_hints

from gateway import ChatStream, ChatStreamOptions, Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(name: str) -> str:
    return README[README.index(f"<!-- section:{name} -->") : README.index(f"<!-- /section:{name} -->")]


def test_the_configuration_table_lists_every_setting_as_the_code_defines_it() -> None:
    rows = {}
    for line in section("config").splitlines():
        if line.startswith("| `--"):
            flag, env, _default, meaning = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[flag.strip("`")] = (env.strip("`"), meaning)
    expected = {
        "--" + name.replace("_", "-"): (f"CHATSTREAM_{name.upper()}", field.description)
        for name, field in Settings.model_fields.items()
    }
    assert rows == expected


def test_the_library_section_names_every_chat_stream_argument() -> None:
    # Issue 13: the list had fallen behind the constructor.
    text = section("library")
    listed = set(re.findall(r"`(\w+)(?:=[^`]*)?`", text))
    arguments = set(inspect.signature(ChatStream.__init__).parameters) - {"self", "options"}
    assert arguments | set(get_type_hints(ChatStreamOptions)) <= listed
