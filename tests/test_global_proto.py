"""tollgate's hand-written protobuf (src/limits/global/proto.rs) is checked in Rust
against the byte vectors in src/limits/global/vectors.txt. This re-derives every
vector with Python's official protobuf runtime from the upstream field numbers
(tests/rls_proto.py), so the vectors cannot drift from what Envoy and an RLS expect."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from rls_proto import RateLimitRequest, RateLimitResponse, SetEnvoyFilterStateArguments  # noqa: E402

VECTORS = ROOT / "src" / "limits" / "global" / "vectors.txt"


def expected() -> dict[str, bytes]:
    out = {}
    r = RateLimitRequest(domain="tollgate", hits_addend=1234)
    d = r.descriptors.add()
    d.entries.add(key="consumer", value="alice")
    d.entries.add(key="model", value="gpt-4o-mini")
    out["request_full"] = r.SerializeToString()
    r = RateLimitRequest(domain="d")
    r.descriptors.add().entries.add(key="k", value="")
    out["request_defaults"] = r.SerializeToString()
    out["filter_state"] = SetEnvoyFilterStateArguments(
        path="envoy.ratelimit.hits_addend", value="1500").SerializeToString()
    out["filter_state_span"] = SetEnvoyFilterStateArguments(path="p", value="v", span=1).SerializeToString()
    x = RateLimitResponse(overall_code=2, raw_body=b"zz")
    s = x.statuses.add(code=2, limit_remaining=7)
    s.current_limit.requests_per_unit = 1000
    s.current_limit.unit = 2  # MINUTE
    s.current_limit.name = "tpm"
    s.duration_until_reset.seconds = 42
    s.duration_until_reset.nanos = 500_000_000
    x.response_headers_to_add.add(key="x-a", value="1")
    x.request_headers_to_add.add(key="x-b", value="2")
    out["response_over_limit"] = x.SerializeToString()
    x = RateLimitResponse(overall_code=1)
    x.statuses.add(code=1)
    out["response_ok_minimal"] = x.SerializeToString()
    return out


def test_vectors_match_the_official_protobuf_runtime():
    stored = dict(line.split(" ", 1) for line in VECTORS.read_text().splitlines() if line.strip())
    want = {k: v.hex() for k, v in expected().items()}
    assert {k: v.strip() for k, v in stored.items()} == want


def test_the_vectors_decode_to_the_fields_the_rust_tests_assert():
    r = RateLimitRequest.FromString(expected()["request_full"])
    assert r.domain == "tollgate" and r.hits_addend == 1234
    assert [(e.key, e.value) for e in r.descriptors[0].entries] == [("consumer", "alice"), ("model", "gpt-4o-mini")]
    x = RateLimitResponse.FromString(expected()["response_over_limit"])
    assert x.overall_code == 2 and x.statuses[0].limit_remaining == 7
