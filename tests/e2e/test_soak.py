"""A shortened soak (benches/soak.py) in the regular suite: a few thousand mixed
requests through every feature, with the same checks as `make soak` (zero errors
caused by Envoy/tollgate, bodies unchanged, limits refusing at their edge, no VM
restart, memory flat from the 2nd to the last quarter). Bounded to 60 s."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
import soak  # noqa: E402


def test_short_soak(artefacts, wasm):
    s = soak.run(argparse.Namespace(
        requests=8000, clients=3, concurrency=1, max_seconds=50, max_growth=2.0, limit_tokens=1500, json=None))
    soak.show(s)
    assert s["ok"], {k: v for k, v in s["checks"].items() if not v}
    assert s["outcomes"]["ok"] > 6000
