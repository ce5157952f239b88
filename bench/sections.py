"""Generated sections of a docs page: `<!-- NAME:start -->` ... `<!-- NAME:end -->`.

Several bench commands write to one page (docs/reliability.md: the soak, the drain and
the swap figures); each replaces only its own section, so rerunning one keeps the others.
"""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def sections(text: str) -> list[str]:
    """Every marked section of `text`, markers included, in order."""
    return [m.group(0) for m in
            re.finditer(r"<!-- ([a-z0-9-]+):start -->.*?<!-- \1:end -->", text, re.S)]


def replace_section(path: Path, name: str, body: str) -> None:
    """Write `body` as section `name` of `path`: in place if present, else appended."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def keep_sections(path: Path, new_text: str) -> str:
    """`new_text` followed by the marked sections `path` already has (a page's generated
    head rewritten, the other commands' sections kept)."""
    old = path.read_text() if path.exists() else ""
    kept = [s for s in sections(old) if s not in new_text]
    return new_text.rstrip("\n") + "".join(f"\n\n{s}" for s in kept) + "\n"
