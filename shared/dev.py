"""`payhooks dev`: try payhooks on one machine, without Docker and without writing a config.

It uses the Redis at `PAYHOOKS_REDIS_URL` (default localhost:6379) when one answers, else
starts a redis-server of its own on a free port; writes a sample config with a merchant
called `demo` that has all four providers; and serves the ingress on 127.0.0.1. Ctrl-C
stops everything it started. The secrets in the sample config are for trying it out only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.redis_server import RedisServer, answers

DEMO_SECRETS = {
    "DEMO_IXOPAY_SECRET": "demo-ixopay-shared-secret",
    "DEMO_IFTHENPAY_KEY": "demo-anti-phishing-key",
    "DEMO_NETAXEPT_TOKEN": "demo-netaxept-token",
    "DEMO_PAYEX_TOKEN": "demo-payex-token",
}

SAMPLE_CONFIG = """\
# Written by `payhooks dev`: a sample merchant `demo` with all four providers.
[ingress]
host = "127.0.0.1"
port = {port}

[logging]
format = "console"

[merchants.demo.ixopay]
shared_secret = "${{DEMO_IXOPAY_SECRET}}"

[merchants.demo.ifthenpay]
anti_phishing_key = "${{DEMO_IFTHENPAY_KEY}}"

[merchants.demo.netaxept]
merchant_id = "12002835"
token = "${{DEMO_NETAXEPT_TOKEN}}"
base_url = "http://127.0.0.1:9"

[merchants.demo.payex]
token = "${{DEMO_PAYEX_TOKEN}}"
base_url = "http://127.0.0.1:9"
"""


def run(port: int = 8080) -> int:
    """Start Redis if needed and the ingress; return when the ingress stops."""
    url = os.environ.get("PAYHOOKS_REDIS_URL", "redis://127.0.0.1:6379/0")
    server: RedisServer | None = None
    if not answers(url):
        server = RedisServer().start()
        url = server.url
    workdir = Path(tempfile.mkdtemp(prefix="payhooks-dev-"))
    config = workdir / "payhooks.toml"
    config.write_text(SAMPLE_CONFIG.format(port=port))
    env = {**os.environ, **DEMO_SECRETS, "PAYHOOKS_REDIS_URL": url}
    print(f"payhooks dev: Redis {url}{' (started here)' if server else ''}")
    print(f"payhooks dev: ingress http://127.0.0.1:{port}, config {config}")
    print(f"payhooks dev: callbacks go to http://127.0.0.1:{port}/callbacks/demo/<provider>")
    print("payhooks dev: Ctrl-C stops everything")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ingress = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "ingress", "--config", str(config)], env=env
    )
    try:
        return ingress.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if ingress.poll() is None:
            ingress.terminate()
            ingress.wait(timeout=15)
        if server is not None:
            server.close()
