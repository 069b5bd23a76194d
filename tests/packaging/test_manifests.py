"""Istio WasmPlugin and Envoy Gateway EnvoyExtensionPolicy manifests, checked
structurally (no cluster here): the API shapes those CRDs document, tollgate's
config inside each one valid against filters/tollgate.schema.json, every key of
tollgate's `routes` map naming an Envoy route the same file declares (Istio: the
VirtualService http[].name; Envoy Gateway: the route names it generates), and the
allow_on_headers_stop_iteration patch tollgate needs on Envoy present for both."""
from __future__ import annotations

import json
import pathlib
import re
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "filters" / "tollgate.schema.json").read_text())
sys.path.insert(0, str(ROOT / "tests" / "kong"))
from test_kong import pending  # noqa: E402  (sections other branches are adding)


def docs(rel):
    return list(yaml.safe_load_all((ROOT / rel).read_text()))


def by_kind(items, kind):
    return [d for d in items if d["kind"] == kind]


def valid(config):
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(pending(SCHEMA, config)))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


OCI_REF = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+:[A-Za-z0-9._-]+$")


def test_istio_wasmplugin():
    items = docs("envoy/istio/wasmplugin.yaml")
    (wp,) = by_kind(items, "WasmPlugin")
    assert wp["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = wp["spec"]
    assert spec["url"].startswith("oci://") and OCI_REF.match(spec["url"][len("oci://"):])
    assert spec["phase"] in ("AUTHN", "AUTHZ", "STATS")
    assert spec["failStrategy"] in ("FAIL_CLOSE", "FAIL_OPEN")
    assert spec["imagePullPolicy"] in ("IfNotPresent", "Always")
    assert "selector" in spec or "targetRefs" in spec
    valid(spec["pluginConfig"])
    for env in spec.get("vmConfig", {}).get("env", []):
        assert env["valueFrom"] in ("INLINE", "HOST") and env["name"]

    (vs,) = by_kind(items, "VirtualService")
    names = [h.get("name") for h in vs["spec"]["http"]]
    assert all(names), "every http route needs a name: it becomes xds.route_name"
    assert set(spec["pluginConfig"].get("routes", {})) <= set(names)

    (ef,) = by_kind(items, "EnvoyFilter")
    (patch,) = ef["spec"]["configPatches"]
    assert patch["applyTo"] == "EXTENSION_CONFIG" and patch["patch"]["operation"] == "MERGE"
    value = patch["patch"]["value"]
    assert value["name"] == f"{wp['metadata']['namespace']}.{wp['metadata']['name']}"
    assert value["typed_config"]["@type"].endswith("envoy.extensions.filters.http.wasm.v3.Wasm")
    assert value["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    assert ef["spec"]["workloadSelector"]["labels"] == spec["selector"]["matchLabels"]


def eg_route_names(items):
    """Envoy route names Envoy Gateway generates for the HTTPRoutes in the file."""
    out = set()
    for r in by_kind(items, "HTTPRoute"):
        ns, name = r["metadata"]["namespace"], r["metadata"]["name"]
        for host in r["spec"]["hostnames"]:
            for i, rule in enumerate(r["spec"]["rules"]):
                for j, _ in enumerate(rule.get("matches", [{}])):
                    out.add(f"httproute/{ns}/{name}/rule/{i}/match/{j}/{host.replace('.', '_')}")
    return out


def test_envoy_gateway_extension_policies():
    items = docs("envoy/envoy-gateway/extension-policy.yaml")
    policies = by_kind(items, "EnvoyExtensionPolicy")
    assert len(policies) == 2, "one on the Gateway, one on a single HTTPRoute"
    routes = {r["metadata"]["name"] for r in by_kind(items, "HTTPRoute")}
    gateways = set()
    generated = eg_route_names(items)
    for p in policies:
        assert p["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
        for ref in p["spec"]["targetRefs"]:
            assert ref["group"] == "gateway.networking.k8s.io"
            assert ref["kind"] in ("Gateway", "HTTPRoute")
            if ref["kind"] == "HTTPRoute":
                assert ref["name"] in routes
            else:
                gateways.add(ref["name"])
        (w,) = p["spec"]["wasm"]
        assert w["code"]["type"] == "Image" and OCI_REF.match(w["code"]["image"]["url"])
        assert isinstance(w["failOpen"], bool)
        valid(w["config"])
        assert set(w["config"].get("routes", {})) <= generated, generated
    for r in by_kind(items, "HTTPRoute"):
        assert {ref["name"] for ref in r["spec"]["parentRefs"]} <= gateways

    (epp,) = by_kind(items, "EnvoyPatchPolicy")
    assert epp["spec"]["type"] == "JSONPatch" and epp["spec"]["targetRef"]["name"] in gateways
    (op,) = epp["spec"]["jsonPatches"]
    assert op["type"].endswith("envoy.config.listener.v3.Listener")
    assert op["operation"]["path"].endswith("/allow_on_headers_stop_iteration")
    assert op["operation"]["value"] is True
