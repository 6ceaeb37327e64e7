"""compose.yaml and the Dockerfile, checked without a Docker engine.

The file is validated by Debian's docker-compose (`config`), which checks it against the
Compose schema it ships; every command a service names must be an entry point the image
installs (this environment installs the same distribution, `payhooks[dev]`), and must
accept its arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import settings_from_dict
from tests.helpers import ROOT

ROOT = ROOT


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_docker_compose_validates_the_file(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    for name in ("compose.yaml", ".env.example", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    env_file = (tmp_path / ".env.example").read_text().replace(
        "RQ_DASHBOARD_PASSWORD=", "RQ_DASHBOARD_PASSWORD=example")
    (tmp_path / ".env").write_text(env_file)
    (tmp_path / "payhooks.toml").write_text("")
    done = subprocess.run([binary, "-f", "compose.yaml", "config", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    services = subprocess.run([binary, "-f", "compose.yaml", "config", "--services"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=True).stdout.split()
    assert sorted(services) == ["console", "dashboard", "ingress", "redis", "worker"]


def test_every_command_is_an_entry_point_of_the_image_and_accepts_its_arguments() -> None:
    scripts = {script.name for script in entry_points(group="console_scripts")}
    for name, service in compose()["services"].items():
        if "image" in service and not service["image"].startswith("payhooks"):
            continue  # redis: the official image
        command = service["command"]
        assert command[0] in scripts, f"{name}: {command[0]} is not installed"
        help_args = [command[1], "--help"] if command[0] == "payhooks" else ["--help"]
        script = Path(sys.executable).parent / command[0]  # installed beside this Python
        done = subprocess.run([str(script), *help_args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{name}: {done.stderr}"


def test_the_stack_is_wired_as_the_readme_says() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "everysec" in redis["command"]
    assert "healthcheck" in redis and any(":/data" in v for v in redis["volumes"])
    for name in ("ingress", "worker", "dashboard"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("ingress", "worker"):
        assert services[name]["environment"]["PAYHOOKS_REDIS_URL"].startswith("redis://redis")
    assert "redis://redis:6379/0" in services["dashboard"]["command"]
    assert services["dashboard"]["ports"] == ["127.0.0.1:9181:9181"]
    assert services["console"]["ports"] == ["127.0.0.1:9180:9180"]  # never public
    assert "ports" not in services["worker"]  # so that --scale worker=8 works
    named = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "compose.yaml").read_text()))
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert named <= documented


def test_the_image_runs_as_a_non_root_user_with_pinned_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "-c .ci/constraints.txt" in dockerfile
    assert "--no-index" in dockerfile  # the final stage installs only the pinned wheels


def test_the_build_context_leaves_out_the_venv_history_secrets_and_tests() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".env", "tests", "payhooks.toml"} <= ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in ("pyproject.toml", "README.md", ".ci/constraints.txt", "ingress", "workers",
                   "shared"):
        assert needed in dockerfile and needed not in ignored  # what the image copies


def test_the_dashboard_gets_no_merchant_secret_and_a_missing_config_is_no_directory() -> None:
    services = compose()["services"]
    dashboard = services["dashboard"]
    assert "env_file" not in dashboard  # .env holds every merchant's secrets
    assert set(dashboard["environment"]) == {"RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"}
    assert [port.split(":")[0] for port in dashboard["ports"]] == ["127.0.0.1"]
    public = [name for name, service in services.items() for port in service.get("ports", ())
              if not str(port).startswith("127.0.0.1:")]
    assert public == ["ingress"]
    for name in ("ingress", "worker"):
        [mount] = services[name]["volumes"]
        # the short form "./payhooks.toml:/etc/..." made a directory when the file was missing
        assert mount == {"type": "bind", "source": "./payhooks.toml",
                         "target": "/etc/payhooks/payhooks.toml", "read_only": True}


def test_the_high_availability_file_adds_a_replica_and_sentinels_and_points_payhooks_at_them(
        tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    for name in ("compose.yaml", "compose.ha.yaml", ".env.example", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".env").write_text((tmp_path / ".env.example").read_text().replace(
        "RQ_DASHBOARD_PASSWORD=", "RQ_DASHBOARD_PASSWORD=example"))
    (tmp_path / "payhooks.toml").write_text("")
    files = ["-f", "compose.yaml", "-f", "compose.ha.yaml"]
    merged = subprocess.run([binary, *files, "config"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    services = yaml.safe_load(merged)["services"]
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    for name in ("ingress", "worker", "console"):
        url = services[name]["environment"]["PAYHOOKS_REDIS_URL"]
        assert url.startswith("redis+sentinel://sentinel-1:26379,")
        settings_from_dict({"redis_url": url}, environ={})  # payhooks reads it
    assert "--replicaof" in services["redis-replica"]["command"]
    assert "sentinel monitor payhooks redis 6379 2" in " ".join(
        services["sentinel-1"]["command"])
