"""The example configs and tollgate's defaults validate against the published JSON Schema,
and configs the schema refuses are refused by the filter's own parser (via the Rust test
binary's behaviour is covered in tests/config_schema.rs; here the schema itself is checked
as a schema, with an independent validator)."""
import json
import pathlib

import jsonschema

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "filters" / "tollgate.schema.json").read_text())


def test_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_examples_validate():
    examples = sorted((ROOT / "filters" / "examples").glob("*.json"))
    assert len(examples) >= 3
    for path in examples:
        jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(path.read_text()))


def test_schema_refuses_what_the_filter_refuses():
    v = jsonschema.Draft202012Validator(SCHEMA)
    bad = [
        {"routs": {}},
        {"defaults": {"metering": {"enabeld": True}}},
        {"routes": {"chat": {"max_request_bytes": 0}}},
        {"routes": {"chat": {"provider": "has.dot"}}},
        {"defaults": {"invalid_body": "drop"}},
        {"metrics": {"max_model_labels": 0}},
        {"routes": {"": {}}},
        {"defaults": {"limits": {"rules": [{"name": "m", "window": "1y", "tokens": 1}]}}},
        {"defaults": {"limits": {"rules": [{"name": "m", "window": "1m"}]}}},
        {"defaults": {"limits": {"rules": [{"name": "m", "window": "1m", "tokens": 0}]}}},
        {"defaults": {"limits": {"rules": [{"window": "1m", "tokens": 1}]}}},
        {"defaults": {"limits": {"consumer": {"header": "X-Consumer"}}}},
    ]
    for cfg in bad:
        assert not v.is_valid(cfg), cfg
