#!/usr/bin/env python3
"""Envoy bootstraps for tollgate's shared (cross-replica) token limits.

Takes the main template (envoy/envoy.template.yaml, rendered by envoy/render.py)
and adds what each mode needs, so the full config shown in README.md is always
the one the e2e tests run (tests/e2e/test_global_limits.py):

  * an HTTP/2 cluster `rate_limit_service` for the RLS (gRPC), and/or
    `rate_limit_http` for Limitador's HTTP API;
  * mode `hits_addend`: Envoy's own `envoy.filters.http.ratelimit` AFTER tollgate,
    and two `rate_limits` on the LLM routes: one at request time (charges what
    tollgate put in `envoy.ratelimit.hits_addend`: prompt + reservation) and one
    `apply_on_stream_done` (charges the overrun tollgate puts there at the end);
  * modes `rls_grpc` / `http`: nothing but the cluster; tollgate calls the service.

    python3 envoy/global-ratelimit/bootstrap.py --mode hits_addend \\
        --rls 127.0.0.1:8081 --config filters/examples/global-limits.json --out /tmp/envoy.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "envoy"))
import render as envoy_render  # noqa: E402

RLS_CLUSTER = "rate_limit_service"
HTTP_CLUSTER = "rate_limit_http"
# The descriptor both sides agree on: entry `consumer` = the trusted consumer header.
CONSUMER_HEADER = "x-consumer-id"


def _cluster(name: str, host: str, port: int, http2: bool) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2 to the service.
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def ratelimit_filter(domain: str, timeout: str = "0.2s", failure_mode_deny: bool = False) -> dict:
    """Envoy's global rate-limit filter, to be placed after tollgate."""
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "timeout": timeout,
            "failure_mode_deny": failure_mode_deny,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
            },
        },
    }


def route_rate_limits() -> list:
    """Same descriptor twice: at request time and when the stream is done. Envoy sends
    `hits_addend` from the filter state `envoy.ratelimit.hits_addend` each time."""
    def action():
        return [{"request_headers": {"header_name": CONSUMER_HEADER, "descriptor_key": "consumer"}}]

    return [{"actions": action()}, {"actions": action(), "apply_on_stream_done": True}]


def openai_error_body_for_rl() -> dict:
    """Local-reply mapper: Envoy's own 429 (response flag RL) gets an OpenAI-dialect
    body, so SDKs raise RateLimitError as they do for tollgate's 429s."""
    return {
        "mappers": [{
            "filter": {"response_flag_filter": {"flags": ["RL"]}},
            "body_format_override": {"json_format": {"error": {
                "message": "Rate limit reached for tokens (shared limit).",
                "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}},
        }]
    }


def mutate_for(mode: str, rls: tuple[str, int] | None = None, http: tuple[str, int] | None = None,
               domain: str = "tollgate", timeout: str = "0.2s"):
    """A `mutate(doc)` for envoy/render.py that adds what `mode` needs."""

    def mutate(doc: dict) -> None:
        clusters = doc["static_resources"]["clusters"]
        if rls:
            clusters.append(_cluster(RLS_CLUSTER, rls[0], rls[1], http2=True))
        if http:
            clusters.append(_cluster(HTTP_CLUSTER, http[0], http[1], http2=False))
        if mode != "hits_addend":
            return
        hcm = envoy_render_hcm(doc)
        filters = hcm["http_filters"]
        at = next(i for i, f in enumerate(filters) if f["name"] == "tollgate") + 1
        filters.insert(at, ratelimit_filter(domain, timeout))
        hcm["local_reply_config"] = openai_error_body_for_rl()
        for vh in hcm["route_config"]["virtual_hosts"]:
            for r in vh["routes"]:
                if r.get("name") in ("openai", "anthropic"):
                    r["route"]["rate_limits"] = route_rate_limits()

    return mutate


def envoy_render_hcm(doc: dict) -> dict:
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["hits_addend", "rls_grpc", "http"], required=True)
    ap.add_argument("--rls", default="127.0.0.1:8081", help="RLS gRPC address (host:port)")
    ap.add_argument("--http", default="127.0.0.1:8080", help="Limitador HTTP address (host:port)")
    ap.add_argument("--config", default=str(ROOT / "filters" / "examples" / "global-limits.json"))
    ap.add_argument("--wasm", default=envoy_render.DEFAULT_WASM)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()
    cfg = json.loads(Path(a.config).read_text())
    text = envoy_render.render(
        wasm=a.wasm, config=cfg,
        mutate=mutate_for(a.mode, rls=_addr(a.rls), http=_addr(a.http) if a.mode == "http" else None),
    )
    if a.out == "-":
        sys.stdout.write(text)
    else:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
