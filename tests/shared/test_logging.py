"""Log lines never carry a frame's local variables: an exception's traceback is logged
with file, line and function only, since locals may hold settings, keys and bodies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import structlog

from shared.logging import configure_logging
from shared.settings import LoggingSettings

SECRET = "whsec_never-in-a-log-line"  # the value the test looks for


def fail_holding_a_secret() -> None:
    hook_secret = SECRET
    raise RuntimeError(f"failed after {len(hook_secret)} characters")


@pytest.mark.parametrize("format", ["json", "console"])
def test_logged_tracebacks_leave_out_local_variables(
    format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(LoggingSettings(level="info", format=format),  # type: ignore[arg-type]
                      cache=False)
    try:
        fail_holding_a_secret()
    except RuntimeError:
        structlog.get_logger("test").exception("job.failed")
    finally:
        configure_logging(LoggingSettings(level="info", format="json"), cache=False)
    out = capsys.readouterr().out
    assert "fail_holding_a_secret" in out  # the traceback is there...
    assert SECRET not in out  # ...without the locals
    if format == "json":
        line = orjson.loads(out.strip().splitlines()[-1])
        assert line["exception"][0]["frames"][-1]["name"] == "fail_holding_a_secret"


def test_console_lines_are_plain_text_when_written_to_a_file_or_a_pipe(tmp_path: Any) -> None:
    """Before: ANSI colour codes in `payhooks dev > dev.log`."""
    import subprocess
    import sys

    script = ("from shared.logging import configure_logging\n"
              "from shared.settings import LoggingSettings\n"
              "import structlog\n"
              "configure_logging(LoggingSettings(format='console'))\n"
              "structlog.get_logger('payhooks.test').warning('event_delivered', hook='orders')\n")
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, check=True, timeout=60)
    text = log.read_text()
    assert "event_delivered" in text and "hook=orders" in text
    assert "\x1b[" not in text
