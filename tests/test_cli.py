"""The command line explains itself: every option of `ortserve serve` names its setting and
default, every command has help, and a served instance says where everything is once
ready."""

from __future__ import annotations

import re

from app.cli import build_parser
from app.settings import Settings
from tests.builders import build_repository
from tests.servers import ServiceProcess, wait_until


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_serve_option_names_its_setting_and_default():
    serve = _subcommands()["serve"]
    for action in serve._actions:
        if action.dest == "help":
            continue
        found = re.search(r"\(ORTSERVE_([A-Z_]+), default ([^)]*)\)", action.help or "")
        assert found, action.dest
        field = Settings.model_fields[found.group(1).lower()]
        default = field.default_factory() if field.default_factory else field.default
        assert found.group(2) == ("unset" if default is None else str(default)), action.dest


def test_every_command_and_option_has_help():
    for name, parser in _subcommands().items():
        assert parser.description or name in ("sign", "verify", "keygen")
        for action in parser._actions:
            assert action.help, f"{name} {action.dest}"


def test_serve_says_where_everything_is_once_ready(tmp_path):
    with ServiceProcess(build_repository(tmp_path / "models"), tmp_path / "log") as svc:
        wait_until(lambda: "ortserve is ready on" in svc.logs(), 30, "the ready message")
        logs = svc.logs()
    base = f"http://localhost:{svc.port}" if "localhost" in logs else svc.url
    for line in (f"{base}/predict", f"{base}/docs", f"{base}/ui/", f"{base}/metrics",
                 "/health/ready"):
        assert line.replace("localhost", "127.0.0.1") in logs or line in logs, line
    assert logs.count("ortserve is ready on") == 1
