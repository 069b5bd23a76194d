"""Fixtures for the e2e tests: the mock provider and Envoy, with or without
tollgate. See harness.py for the process handling.

- `mock`: one mock provider for the session (its /_mock/last is shared, so
  tests read it right after their own request).
- `envoy_with(config=None, with_wasm=True, concurrency=1, mutate=None)`:
  factory; starts an Envoy in front of `mock` with that tollgate config (dict
  or JSON text; None = filters/examples/metering.json); `mutate(doc)` may
  edit the bootstrap (see harness.route). Stopped at the end of the module.
- `envoy`: Envoy + tollgate with the example metering config (module scope).
- `plain_envoy`: Envoy without the wasm filter (module scope).
"""
from __future__ import annotations

import pytest

import harness


def _check(path, what):
    try:
        harness.require(path, what)
    except harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def artefacts():
    _check(harness.MOCK_BIN, "mock provider binary")
    _check(harness.ENVOY_BIN, "Envoy (.venv/bin/envoy)")
    return harness


@pytest.fixture(scope="session")
def wasm(artefacts):
    _check(harness.WASM, "tollgate.wasm")
    return harness.WASM


@pytest.fixture(scope="session")
def mock(artefacts):
    m = harness.MockProvider.start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def envoy_with(artefacts, mock):
    started: list[harness.Envoy] = []

    def start(config=None, *, with_wasm: bool = True, concurrency: int = 1, name: str = "envoy", mutate=None):
        if with_wasm:
            _check(harness.WASM, "tollgate.wasm")
        env = harness.Envoy.start(
            upstream_port=mock.port, config=config, with_wasm=with_wasm,
            concurrency=concurrency, name=name, mock=mock, mutate=mutate,
        )
        started.append(env)
        return env

    yield start
    for env in started:
        env.stop()


@pytest.fixture(scope="module")
def envoy(envoy_with, wasm):
    return envoy_with(None, name="tollgate")


@pytest.fixture(scope="module")
def plain_envoy(envoy_with):
    return envoy_with(None, with_wasm=False, name="plain")
