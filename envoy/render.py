#!/usr/bin/env python3
"""Render envoy/envoy.template.yaml into an Envoy bootstrap.

Used by `make run` (writes envoy/envoy.yaml) and by the e2e tests
(tests/e2e/conftest.py imports `render`).

    python3 envoy/render.py --out envoy/envoy.yaml \
        --wasm target/wasm32-wasip1/release/tollgate.wasm \
        --config filters/examples/metering.json

Plain substitution keeps the template's comments. Two options change the
structure and need PyYAML (the project venv has it): `with_wasm=False`
(drop the tollgate filter and its per-route settings: plain Envoy) and
`access_log_path` (log to a file instead of stdout).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.template.yaml"
DEFAULT_WASM = "target/wasm32-wasip1/release/tollgate.wasm"
FILTER_NAME = "tollgate"
PLACEHOLDERS = ("{{WASM}}", "{{CONFIG_JSON}}", "{{PORT}}", "{{ADMIN_PORT}}", "{{UPSTREAM_PORT}}")


def config_text(config) -> str:
    """tollgate config as JSON text: a dict/list is serialised, a str is taken
    as it is (so tests can hand Envoy invalid configs on purpose)."""
    if config is None:
        return "{}"
    if isinstance(config, (str, bytes)):
        return config.decode() if isinstance(config, bytes) else config
    return json.dumps(config, ensure_ascii=False, separators=(",", ":"))


def _yaml_str(s: str) -> str:
    # A JSON string literal is a valid YAML double-quoted scalar.
    return json.dumps(s, ensure_ascii=False)


def _port(p) -> str:
    p = int(p)
    if not 0 < p < 65536:
        raise ValueError(f"bad port {p}")
    return str(p)


def render(
    *,
    wasm: str | Path = DEFAULT_WASM,
    config=None,
    port: int = 10000,
    admin_port: int = 9901,
    upstream_port: int = 10001,
    with_wasm: bool = True,
    access_log_path: str | Path | None = None,
    template: str | Path = TEMPLATE,
    mutate=None,
) -> str:
    """The bootstrap as YAML text. `mutate(doc)`, if given, may change the
    parsed bootstrap in place (tests use it for one-off routes or limits)."""
    text = Path(template).read_text(encoding="utf-8")
    values = {
        "{{WASM}}": _yaml_str(str(wasm)),
        "{{CONFIG_JSON}}": _yaml_str(config_text(config)),
        "{{PORT}}": _port(port),
        "{{ADMIN_PORT}}": _port(admin_port),
        "{{UPSTREAM_PORT}}": _port(upstream_port),
    }
    for k, v in values.items():
        text = text.replace(k, v)
    if with_wasm and access_log_path is None and mutate is None:
        return text

    import yaml  # only needed for structural changes

    doc = yaml.safe_load(text)
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for nf in chain["filters"]:
                hcm = nf.get("typed_config", {})
                if "http_filters" not in hcm:
                    continue
                if not with_wasm:
                    hcm["http_filters"] = [f for f in hcm["http_filters"] if f.get("name") != FILTER_NAME]
                    for vh in hcm.get("route_config", {}).get("virtual_hosts", []):
                        for r in vh.get("routes", []):
                            tpfc = r.get("typed_per_filter_config")
                            if tpfc:
                                tpfc.pop(FILTER_NAME, None)
                                if not tpfc:
                                    del r["typed_per_filter_config"]
                if access_log_path is not None:
                    for al in hcm.get("access_log", []):
                        if al.get("name") == "envoy.access_loggers.stdout":
                            fmt = al["typed_config"].get("log_format")
                            al["name"] = "envoy.access_loggers.file"
                            al["typed_config"] = {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                "path": str(access_log_path),
                            }
                            if fmt is not None:
                                al["typed_config"]["log_format"] = fmt
    if mutate is not None:
        mutate(doc)
    header = "# Rendered from envoy/envoy.template.yaml by envoy/render.py; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1 << 16)


def write(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(**kwargs), encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="-", help="output file, - for stdout")
    ap.add_argument("--wasm", default=DEFAULT_WASM)
    ap.add_argument("--config", help="tollgate JSON config file (default: {})")
    ap.add_argument("--port", type=int, default=10000)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument("--upstream-port", type=int, default=10001)
    ap.add_argument("--no-wasm", action="store_true", help="plain Envoy, without the tollgate filter")
    ap.add_argument("--access-log", help="access log file instead of stdout")
    a = ap.parse_args(argv)
    config = None
    if a.config:
        raw = Path(a.config).read_text(encoding="utf-8")
        config = json.loads(raw)  # validates, and compacts to one line
    out = render(
        wasm=a.wasm,
        config=config,
        port=a.port,
        admin_port=a.admin_port,
        upstream_port=a.upstream_port,
        with_wasm=not a.no_wasm,
        access_log_path=a.access_log,
    )
    if a.out == "-":
        sys.stdout.write(out)
    else:
        Path(a.out).write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
