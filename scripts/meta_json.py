#!/usr/bin/env python3
"""Generate kong/tollgate.meta.json from filters/tollgate.schema.json.

Kong (3.4+) reads `<filter>.meta.json` next to `<filter>.wasm` in
`wasm_filters_path`. Its `config_schema` must be JSON Schema draft 4 (Kong sets
`$schema` to draft 4 itself and validates with lua-resty-ljsonschema), and with a
schema an object `config` in a filter chain reaches `on_configure` as JSON text.
`metrics.label_patterns` tells Kong's Prometheus plugin how to lift labels out of
the metric names (tollgate encodes labels in the name, as Envoy needs).

The downgrade is mechanical and refuses anything it cannot express in draft 4:
  - `$schema` -> draft 4, `$id` dropped
  - every `$ref` to `#/$defs/...` inlined (Kong's validator resolves no refs
    across documents; inlining keeps the schema self-contained)
  - `propertyNames: {minLength: 1}` -> `patternProperties` on `^.+$` with
    `additionalProperties: false`
  - draft 6+ keywords (`const`, `contains`, `if`, numeric `exclusiveMinimum`, ...)
    are errors, so a future schema edit cannot silently lose a constraint.

    python3 scripts/meta_json.py          # write kong/tollgate.meta.json
    python3 scripts/meta_json.py --check  # exit 1 if it is out of date
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "filters" / "tollgate.schema.json"
OUT = ROOT / "kong" / "tollgate.meta.json"
DRAFT4 = "http://json-schema.org/draft-04/schema#"

# Draft 4 vocabulary (validation + annotation keywords this project uses).
DRAFT4_KEYWORDS = {
    "type", "properties", "additionalProperties", "patternProperties", "required",
    "items", "additionalItems", "minItems", "maxItems", "uniqueItems", "enum",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minProperties", "maxProperties",
    "allOf", "anyOf", "oneOf", "not", "default", "title", "description", "format",
    "dependencies",
}

# Prometheus labels tollgate encodes in metric names (src/metering/labels.rs):
# a label name and a regex whose only group is the value. Separators match both
# the stored dotted name (`pw.tollgate.tollgate.requests.route.chat...`) and the
# underscored form Prometheus exposition needs; label values are sanitised to
# [A-Za-z0-9_-] by tollgate, so they never contain a dot.
SEP = "[._]"
LABEL_PATTERNS = [
    {"label": "gen_ai_token_type", "pattern": f"{SEP}gen_ai_token_type{SEP}(input|output)"},
    {"label": "gen_ai_request_model", "pattern": f"{SEP}gen_ai_request_model{SEP}([A-Za-z0-9_-]+?){SEP}route{SEP}"},
    {"label": "route", "pattern": f"{SEP}route{SEP}([A-Za-z0-9_-]+?){SEP}(?:gen_ai_provider_name|rule){SEP}"},
    {"label": "gen_ai_provider_name", "pattern": f"{SEP}gen_ai_provider_name{SEP}([A-Za-z0-9_-]+?)(?:{SEP}estimated{SEP}|$)"},
    {"label": "estimated", "pattern": f"{SEP}estimated{SEP}(true|false)$"},
    {"label": "rule", "pattern": f"{SEP}rule{SEP}([A-Za-z0-9_-]+?){SEP}decision{SEP}"},
    {"label": "decision", "pattern": f"{SEP}decision{SEP}(allowed|refused|would_refuse)$"},
]


class Unsupported(Exception):
    pass


def downgrade(node, defs, path="#"):
    if isinstance(node, list):
        return [downgrade(v, defs, f"{path}/{i}") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if not ref.startswith("#/$defs/") or set(siblings) - {"description", "title", "default"}:
            raise Unsupported(f"{path}: only local $ref to #/$defs (plus annotations) is supported, got {node}")
        name = ref[len("#/$defs/"):]
        if name not in defs:
            raise Unsupported(f"{path}: $ref to missing definition {name}")
        # In 2020-12 annotations beside $ref apply too; draft 4 ignores siblings
        # of $ref, which inlining sidesteps.
        return downgrade({**copy.deepcopy(defs[name]), **siblings}, defs, f"{path}->{name}")
    out = {}
    for key, value in node.items():
        where = f"{path}/{key}"
        if key in ("$schema", "$id", "$defs"):
            continue
        if key == "propertyNames":
            if set(value) - {"minLength", "pattern"}:
                raise Unsupported(f"{where}: cannot express {value} in draft 4")
            pattern = value.get("pattern", "^.+$")
            if value.get("minLength", 0) > 1:
                raise Unsupported(f"{where}: minLength > 1 not supported")
            extra = node.get("additionalProperties", True)
            out["patternProperties"] = {pattern: downgrade(extra, defs, where) if isinstance(extra, dict) else {}}
            out["additionalProperties"] = False
            continue
        if key == "additionalProperties" and "propertyNames" in node:
            continue  # folded into patternProperties above
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            raise Unsupported(f"{where}: numeric {key} is draft 6+")
        if key == "properties" or key == "patternProperties":
            out[key] = {k: downgrade(v, defs, f"{where}/{k}") for k, v in value.items()}
            continue
        if key not in DRAFT4_KEYWORDS:
            raise Unsupported(f"{where}: keyword {key!r} is not draft 4")
        out[key] = downgrade(value, defs, where) if key not in ("enum", "default", "required") else value
    return out


def build() -> dict:
    schema = json.loads(SCHEMA.read_text())
    defs = schema.get("$defs", {})
    config_schema = {"$schema": DRAFT4, **downgrade(schema, defs)}
    return {
        "config_schema": config_schema,
        "metrics": {"label_patterns": LABEL_PATTERNS},
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if kong/tollgate.meta.json is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python3 scripts/meta_json.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
