"""Fixtures: one `Simulators` and its clients for the session, state reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shared.simulators import Simulators
from shared.simulators.client import SimulatorClient


@pytest.fixture(scope="session")
def running() -> Iterator[Simulators]:
    with Simulators(seed=7) as simulators:
        yield simulators


@pytest.fixture(scope="session")
def session_admin(running: Simulators) -> Iterator[SimulatorClient]:
    with SimulatorClient(running.url) as client:
        yield client


@pytest.fixture(scope="session")
def session_http(running: Simulators) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=5) as client:
        yield client


@pytest.fixture
def sims(running: Simulators) -> Simulators:
    with running.state.lock:
        running.state.reset()
    return running


@pytest.fixture
def admin(sims: Simulators, session_admin: SimulatorClient) -> SimulatorClient:
    return session_admin


@pytest.fixture
def http(sims: Simulators, session_http: httpx.Client) -> httpx.Client:
    return session_http
