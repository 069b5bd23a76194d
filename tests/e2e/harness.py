"""Processes for the e2e tests: the mock LLM provider and Envoy (with or
without tollgate). Everything listens on 127.0.0.1 only, every wait is
bounded, and every process is stopped (terminate, then kill).

Used by tests/e2e/conftest.py; usable on its own too:

    with MockProvider.start() as mock, Envoy.start(upstream_port=mock.port) as env:
        requests.post(env.base_url + "/v1/chat/completions", json=...)
"""
from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "envoy"))
import render as envoy_render  # noqa: E402  (envoy/render.py)

WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate.wasm"
MOCK_BIN = ROOT / "target" / "release" / "mock-provider"
ENVOY_BIN = ROOT / ".venv" / "bin" / "envoy"
RUN_DIR = ROOT / "tests" / "e2e" / ".run"
DEFAULT_CONFIG = ROOT / "filters" / "examples" / "metering.json"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_base_ids = itertools.count(1)


class HarnessError(RuntimeError):
    pass


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise HarnessError(f"{what} not found at {path}: run `make build mock` (and `make venv`) first")
    return path


def hcm(doc: dict) -> dict:
    """The HttpConnectionManager config of a rendered bootstrap."""
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def route(doc: dict, name: str) -> dict:
    """The route called `name` in a rendered bootstrap."""
    for vh in hcm(doc)["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            if r.get("name") == name:
                return r
    raise KeyError(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def unique_base_id() -> int:
    # Distinct per process and per instance, so parallel Envoys (and a
    # leftover shared-memory segment of a crashed one) never collide.
    return (os.getpid() % 100_000) * 100 + next(_base_ids) % 100 + 1_000_000


def stop_process(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- mock


@dataclass
class MockProvider:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, binary: Path = MOCK_BIN, timeout: float = START_TIMEOUT) -> "MockProvider":
        require(binary, "mock provider binary")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        log_path = RUN_DIR / f"mock-{os.getpid()}-{next(_base_ids)}.log"
        err = log_path.open("w")
        # Port 0: the mock binds a free port itself and prints it (no race).
        proc = subprocess.Popen(
            [str(binary), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
        )
        err.close()
        deadline = time.monotonic() + timeout
        line = ""
        # The first stdout line is "mock-provider listening on 127.0.0.1:PORT".
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and not line:
            if proc.poll() is not None:
                break
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
        sel.close()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line or "")
        if not m:
            stop_process(proc)
            raise HarnessError(f"mock provider did not start: {line!r}\n{_tail(log_path)}")
        mock = cls(proc=proc, port=int(m.group(1)), log_path=log_path)
        while time.monotonic() < deadline:
            if http_get(mock.url + "/_mock/health", timeout=1)[0] == 200:
                return mock
            time.sleep(0.05)
        mock.stop()
        raise HarnessError("mock provider did not answer /_mock/health")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # What the provider received -------------------------------------------------
    def last(self) -> dict:
        status, body = http_get(self.url + "/_mock/last")
        if status != 200:
            raise HarnessError(f"/_mock/last: {status} {body}")
        return json.loads(body)

    def last_body(self) -> dict:
        return json.loads(self.last()["body"])

    def requests(self) -> list[dict]:
        return json.loads(http_get(self.url + "/_mock/requests")[1])

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/_mock/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()


# --------------------------------------------------------------------------- envoy


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


class Metrics:
    """Parsed /stats/prometheus."""

    _line = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
    _label = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples: list[Sample] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = self._line.match(line)
            if not m:
                continue
            labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in self._label.findall(m.group(2) or "")}
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            self.samples.append(Sample(m.group(1), labels, value))

    def find(self, name: str, **labels) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def get(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.find(name, **labels))

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


@dataclass
class Envoy:
    proc: subprocess.Popen
    port: int
    admin_port: int
    upstream_port: int
    config_path: Path
    log_path: Path
    access_log_path: Path
    with_wasm: bool
    base_id: int
    mock: MockProvider | None = None
    _extra: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @classmethod
    def start(
        cls,
        *,
        upstream_port: int,
        config=None,
        with_wasm: bool = True,
        wasm: Path = WASM,
        concurrency: int = 1,
        envoy_bin: Path = ENVOY_BIN,
        timeout: float = START_TIMEOUT,
        attempts: int = 3,
        name: str = "envoy",
        mock: MockProvider | None = None,
        mutate=None,
    ) -> "Envoy":
        """Start Envoy; `config` is tollgate's config (dict, JSON text, or None
        for filters/examples/metering.json); `mutate(doc)` may edit the
        bootstrap before it is written. Retries on a port clash."""
        require(envoy_bin, "Envoy (.venv/bin/envoy)")
        if with_wasm:
            require(wasm, "tollgate.wasm")
        if config is None:
            config = json.loads(DEFAULT_CONFIG.read_text())
        last_err = None
        for _ in range(attempts):
            try:
                return cls._start_once(
                    upstream_port=upstream_port, config=config, with_wasm=with_wasm, wasm=wasm,
                    concurrency=concurrency, envoy_bin=envoy_bin, timeout=timeout, name=name, mock=mock,
                    mutate=mutate,
                )
            except _PortClash as e:
                last_err = e
        raise HarnessError(f"Envoy could not bind its ports after {attempts} attempts: {last_err}")

    @classmethod
    def _start_once(cls, *, upstream_port, config, with_wasm, wasm, concurrency, envoy_bin, timeout, name, mock,
                    mutate):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        base_id = unique_base_id()
        port, admin_port = free_port(), free_port()
        while admin_port == port:
            admin_port = free_port()
        stem = RUN_DIR / f"{name}-{base_id}"
        config_path = stem.with_suffix(".yaml")
        log_path = stem.with_suffix(".log")
        access_log_path = Path(f"{stem}.access.log")
        access_log_path.write_text("")
        envoy_render.write(
            config_path, wasm=wasm, config=config, port=port, admin_port=admin_port,
            upstream_port=upstream_port, with_wasm=with_wasm, access_log_path=access_log_path, mutate=mutate,
        )
        log = log_path.open("w")
        proc = subprocess.Popen(
            [str(envoy_bin), "-c", str(config_path), "--concurrency", str(concurrency), "-l", "info",
             "--base-id", str(base_id), "--file-flush-interval-msec", "50"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )
        log.close()
        env = cls(proc=proc, port=port, admin_port=admin_port, upstream_port=upstream_port,
                  config_path=config_path, log_path=log_path, access_log_path=access_log_path,
                  with_wasm=with_wasm, base_id=base_id, mock=mock)
        try:
            env._wait_ready(timeout)
        except BaseException:
            env.stop()
            raise
        return env

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = _tail(self.log_path)
                if "Address already in use" in log or "cannot bind" in log:
                    raise _PortClash(log)
                raise HarnessError(f"Envoy exited with {self.proc.returncode} during start-up:\n{log}")
            try:
                status, body = http_get(self.admin_url + "/ready", timeout=1)
            except OSError:
                status, body = 0, ""
            if status == 200 and body.strip() == "LIVE" and port_open(self.port):
                return
            time.sleep(0.05)
        raise HarnessError(f"Envoy not ready after {timeout}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # Observations ----------------------------------------------------------------
    # tollgate batches its counters in each VM and writes them on a 1 s timer
    # (README, "Metrics"); a reading this long after the last request includes them.
    METRICS_FLUSH_WAIT = 1.5

    def stats(self, wait: float | None = None) -> Metrics:
        """/stats/prometheus once tollgate's batched counts are written (`wait` s)."""
        time.sleep(self.METRICS_FLUSH_WAIT if wait is None else wait)
        status, body = http_get(self.admin_url + "/stats/prometheus")
        if status != 200:
            raise HarnessError(f"/stats/prometheus: {status}")
        return Metrics(body)

    def admin_stats(self) -> dict[str, int]:
        """Counters and gauges of /stats (Envoy's dotted names)."""
        status, body = http_get(self.admin_url + "/stats")
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def mark(self, settle: float = 0.2, timeout: float = 3.0) -> int:
        """Number of access log entries so far; pass it to `new_entries`.

        Envoy writes an entry when the stream ends, which can be just after
        the client has its response, and flushes the file every 50 ms; so
        this first waits until the file has not grown for `settle` seconds,
        so that an earlier request's late entry is not counted as new."""
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.access_log_path.stat().st_size
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            time.sleep(0.02)
        return len(self.access_log())

    def new_entries(self, mark: int, count: int = 1, timeout: float = 5.0) -> list[dict]:
        """The access log entries written after `mark`, waiting up to
        `timeout` for at least `count` of them."""
        entries = self.access_log(min_entries=mark + count, timeout=timeout)[mark:]
        if len(entries) < count:
            raise HarnessError(f"expected {count} new access log entries, got {len(entries)}")
        return entries

    def access_log(self, min_entries: int = 0, timeout: float = 5.0) -> list[dict]:
        """Access log entries (one JSON object per request); waits up to
        `timeout` for at least `min_entries`."""
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            for line in self.access_log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line:
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
            if len(entries) >= min_entries or time.monotonic() >= deadline:
                return entries
            time.sleep(0.05)


class _PortClash(HarnessError):
    pass
