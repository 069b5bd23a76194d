"""The Envoy configs in envoy/: the committed envoy.yaml is the rendered
template, every rendered variant and every snippet is accepted by Envoy 1.40,
and a tollgate config the filter rejects stops Envoy (fail closed)."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
import requests
import yaml

import harness
from harness import ROOT, envoy_render

SNIPPETS = ROOT / "envoy" / "snippets"


def validate(doc_or_text, tmp_path, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(doc_or_text if isinstance(doc_or_text, str) else yaml.safe_dump(doc_or_text, sort_keys=False))
    p = subprocess.run(
        [str(harness.ENVOY_BIN), "--mode", "validate", "-c", str(path), "--base-id", str(harness.unique_base_id())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    return p.returncode, p.stdout + p.stderr


def test_envoy_yaml_is_the_rendered_template():
    config = json.loads((ROOT / "filters" / "examples" / "metering.json").read_text())
    expected = envoy_render.render(config=config)
    actual = (ROOT / "envoy" / "envoy.yaml").read_text()
    assert actual == expected, "envoy/envoy.yaml is stale: run `make envoy/envoy.yaml`"
    assert not any(p in actual for p in envoy_render.PLACEHOLDERS)


@pytest.mark.parametrize("with_wasm", [True, False])
def test_rendered_configs_validate(artefacts, wasm, tmp_path, with_wasm):
    text = envoy_render.render(wasm=wasm, config={"defaults": {"provider": "openai"}}, port=20000,
                               admin_port=20001, upstream_port=20002, with_wasm=with_wasm,
                               access_log_path=None if with_wasm else tmp_path / "access.log")
    rc, out = validate(text, tmp_path)
    assert rc == 0, out
    assert ("tollgate" in text) == with_wasm or not with_wasm
    doc = yaml.safe_load(text)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == (["tollgate", "envoy.filters.http.router"] if with_wasm else ["envoy.filters.http.router"])


def test_config_json_survives_rendering(tmp_path):
    cfg = {"routes": {"r\"1": {"provider": "anthropic"}}, "note": "naïve 🚀 \\ \n"}
    doc = yaml.safe_load(envoy_render.render(config=cfg))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    value = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
    assert json.loads(value) == cfg


def _template_doc(wasm):
    return yaml.safe_load(envoy_render.render(wasm=wasm, port=20010, admin_port=20011, upstream_port=20012))


def _hcm(doc):
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def test_snippets_validate(artefacts, wasm, tmp_path):
    """All four snippets, put together into one bootstrap, are valid Envoy."""
    doc = _template_doc(wasm)
    hcm = _hcm(doc)
    filters = yaml.safe_load((SNIPPETS / "wasm-filter.yaml").read_text())["http_filters"]
    filters[0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm)
    hcm["http_filters"] = filters
    hcm["route_config"] = yaml.safe_load((SNIPPETS / "per-route.yaml").read_text())["route_config"]
    hcm["access_log"] = yaml.safe_load((SNIPPETS / "access-log.yaml").read_text())["access_log"]
    doc["stats_config"] = yaml.safe_load((SNIPPETS / "stats-tags.yaml").read_text())["stats_config"]
    base = doc["static_resources"]["clusters"][0]
    clusters = []
    for name in ("openai", "anthropic"):
        c = copy.deepcopy(base)
        c["name"] = c["load_assignment"]["cluster_name"] = name
        clusters.append(c)
    doc["static_resources"]["clusters"] = clusters
    rc, out = validate(doc, tmp_path)
    assert rc == 0, out


def test_snippets_agree_with_template():
    template = yaml.safe_load(envoy_render.render())
    tags = yaml.safe_load((SNIPPETS / "stats-tags.yaml").read_text())["stats_config"]
    assert tags == template["stats_config"]
    access = yaml.safe_load((SNIPPETS / "access-log.yaml").read_text())["access_log"][0]
    t_access = _hcm(template)["access_log"][0]
    fmt, t_fmt = access["typed_config"]["log_format"]["json_format"], t_access["typed_config"]["log_format"]["json_format"]
    for k, v in fmt.items():
        assert t_fmt.get(k) == v, k
    wasm_cfg = yaml.safe_load((SNIPPETS / "wasm-filter.yaml").read_text())["http_filters"][0]["typed_config"]["config"]
    t_cfg = _hcm(template)["http_filters"][0]["typed_config"]["config"]
    for k in ("name", "root_id", "allow_on_headers_stop_iteration", "fail_open"):
        assert wasm_cfg[k] == t_cfg[k], k
    assert wasm_cfg["vm_config"]["runtime"] == t_cfg["vm_config"]["runtime"]


@pytest.mark.parametrize("config", ['{"routs": {}}', "not json"])
def test_rejected_config_stops_envoy(artefacts, wasm, mock, config):
    with pytest.raises(harness.HarnessError) as err:
        env = harness.Envoy.start(upstream_port=mock.port, config=config, attempts=1, timeout=20, name="badcfg")
        env.stop()  # only reached if Envoy wrongly started
    assert "Unable to create Wasm plugin tollgate" in str(err.value)


def test_request_body_buffer_limit_per_route(envoy_with, mock):
    """tollgate holds the request until its body is complete, so the body
    must fit the buffer: over the 1 MiB connection limit Envoy answers 413,
    and a route's request_body_buffer_limit raises it for that route."""

    def raise_limit(doc):
        r = copy.deepcopy(harness.route(doc, "openai"))
        r["name"] = "bulk"
        r["match"] = {"prefix": "/v1/embeddings"}
        r["request_body_buffer_limit"] = 8 * 1024 * 1024
        routes = harness.hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(0, r)

    # tollgate's own cap (max_request_bytes, default 1 MiB) raised everywhere,
    # so the limit met below is Envoy's.
    config = json.loads((ROOT / "filters" / "examples" / "metering.json").read_text())
    config.setdefault("defaults", {})["max_request_bytes"] = 8 * 1024 * 1024
    env = envoy_with(config, name="bufferlimit", mutate=raise_limit)
    text = "word " * 300_000  # 1.5 MB
    r = requests.post(env.base_url + "/v1/chat/completions",
                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}, timeout=60)
    assert r.status_code == 413
    assert "tollgate" not in r.text  # Envoy's own 413
    r = requests.post(env.base_url + "/v1/embeddings",
                      json={"model": "text-embedding-3-small", "input": text}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["usage"]["prompt_tokens"] > 100_000
    assert mock.last()["body_len"] > 1_500_000
