"""Child processes of the commands that start the system themselves (`bench`, `chaos`) and
of the tests: their environment, waiting until they are ready, stopping them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable

import httpx


def clean_env() -> dict[str, str]:
    """This environment without PAYHOOKS_ variables: for children that are given a config
    file of their own, which those variables would override."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PAYHOOKS_")}


def answers(url: str) -> bool:
    """Whether a GET of `url` is answered 200 within a second."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1.0).status_code == 200
    return False


def wait_until(ready: Callable[[], bool], seconds: float, what: str | Callable[[], str],
               error: type[Exception] = TimeoutError) -> None:
    """Poll `ready` until it is true; after `seconds`, raise `error` with `what` (a callable
    is called then, so that it can show a log as it is at that moment)."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise error(what() if callable(what) else what)
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
