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


if __name__ == "__main__":
    print("\n".join(rows()))
