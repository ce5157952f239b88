"""Print the README's configuration table from app.settings (the one source of truth)."""

from __future__ import annotations

import json

from app.settings import Settings


def rows() -> list[str]:
    out = ["| setting | env var | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        if hasattr(default, "as_posix"):
            default = default.as_posix()
        shown = json.dumps(default) if not isinstance(default, str) else default
        out.append(f"| `{name}` | `ORTSERVE_{name.upper()}` | `{shown}` | "
                   f"{(field.description or '').replace('|', '/')} |")
    return out


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render_into(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + "\n".join(rows()) + "\n" + END + tail


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) > 2 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        path.write_text(render_into(path.read_text()))
    else:
        print("\n".join(rows()))
