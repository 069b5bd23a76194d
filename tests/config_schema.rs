//! `filters/tollgate.schema.json` is the public contract; the Rust types are what
//! actually runs. This test walks the schema and checks, object by object and
//! field by field, that the two accept and refuse the same things and agree on
//! defaults, so neither can drift from the other.

use serde_json::{json, Value};
use tollgate::config::{Config, MetricsConfig, RouteSettings};

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/tollgate.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file"))
        .expect("schema is JSON")
}

/// Resolve a `$ref` inside the schema.
fn deref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            deref(
                root,
                root.pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => node,
    }
}

/// A config with `leaf` placed at `path` (dotted, relative to the root); a `[0]`
/// segment is the first item of an array.
fn config_at(path: &[&str], leaf: Value) -> Value {
    let mut v = leaf;
    for key in path.iter().rev() {
        v = if *key == "[0]" {
            json!([v])
        } else {
            json!({ *key: v })
        };
    }
    v
}

fn parse(v: &Value) -> Result<Config, tollgate::config::ConfigError> {
    Config::parse(v.to_string().as_bytes())
}

/// The field names Rust accepts in the object at `path`, read from serde's own
/// "unknown field ..., expected one of ..." message.
fn rust_fields(path: &[&str]) -> Vec<String> {
    let err = match parse(&config_at(path, json!({ "__bogus__": 1 }))) {
        Ok(_) => panic!("unknown field accepted at {path:?}"),
        Err(e) => e,
    };
    let msg = err.message;
    // serde_json appends " at line L column C" to the message.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let list = msg
        .split_once("expected one of ")
        .or_else(|| msg.split_once("expected "))
        .unwrap_or_else(|| panic!("unexpected message at {path:?}: {msg}"))
        .1;
    let mut out: Vec<String> = list
        .split(", ")
        .flat_map(|s| s.split(" or "))
        .map(|s| s.trim().trim_matches('`').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out
}

/// Every object location the schema defines, as (config path, schema node).
fn objects(root: &Value) -> Vec<(Vec<&'static str>, Value)> {
    let route = deref(root, &root["$defs"]["route_settings"]).clone();
    let metering = deref(root, &root["$defs"]["metering"]).clone();
    let limits = deref(root, &root["$defs"]["limits"]).clone();
    let consumer = deref(root, &limits["properties"]["consumer"]).clone();
    let rule = deref(root, &limits["properties"]["rules"]["items"]).clone();
    vec![
        (vec!["defaults", "limits"], limits.clone()),
        (vec!["routes", "r1", "limits"], limits),
        (vec!["defaults", "limits", "consumer"], consumer.clone()),
        (vec!["routes", "r1", "limits", "consumer"], consumer),
        (vec!["defaults", "limits", "rules", "[0]"], rule.clone()),
        (vec!["routes", "r1", "limits", "rules", "[0]"], rule),
        (vec![], root.clone()),
        (vec!["defaults"], route.clone()),
        (vec!["routes", "r1"], route),
        (vec!["defaults", "metering"], metering.clone()),
        (vec!["routes", "r1", "metering"], metering),
        (
            vec!["metrics"],
            deref(root, &root["properties"]["metrics"]).clone(),
        ),
    ]
}

#[test]
fn schema_and_rust_accept_the_same_fields() {
    let root = schema();
    for (path, node) in objects(&root) {
        assert_eq!(
            node["additionalProperties"],
            json!(false),
            "schema object at {path:?} must refuse unknown fields"
        );
        let mut schema_fields: Vec<String> = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties at {path:?}"))
            .keys()
            .cloned()
            .collect();
        schema_fields.sort();
        assert_eq!(
            schema_fields,
            rust_fields(&path),
            "fields differ at {path:?}"
        );
    }
}

/// The Rust default of every leaf field, as JSON.
fn rust_defaults() -> Value {
    json!({
        "defaults": serde_json::to_value(RouteSettings::default()).unwrap(),
        "metrics": serde_json::to_value(MetricsConfig::default()).unwrap(),
    })
}

#[test]
fn schema_defaults_match_rust_defaults_and_values_are_checked_alike() {
    let root = schema();
    let defaults = rust_defaults();
    let mut leaves = 0;
    for (path, node) in objects(&root) {
        if path.first() == Some(&"routes") {
            continue; // same definitions as `defaults`, already covered
        }
        if path.contains(&"[0]") {
            continue; // array items have required fields: see limit_rule_fields_are_checked_alike
        }
        for (field, prop) in node["properties"].as_object().unwrap() {
            let prop = deref(&root, prop);
            if prop.get("properties").is_some() || field == "routes" {
                continue; // an object, walked on its own
            }
            if field == "provider" {
                continue; // string or object: see provider_object_fields_are_checked_alike
            }
            if path.is_empty() {
                continue;
            }
            leaves += 1;
            let mut full: Vec<&str> = path.clone();
            full.push(field);
            let dotted = full.join(".");

            // Default agrees.
            let rust_default = full.iter().fold(&defaults, |v, k| &v[*k]);
            let schema_default = prop
                .get("default")
                .unwrap_or_else(|| panic!("{dotted}: schema has no default"));
            match (schema_default.as_f64(), rust_default.as_f64()) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{dotted}: default {a} vs {b}"),
                _ => assert_eq!(schema_default, rust_default, "{dotted}: default"),
            }
            // The default is accepted explicitly.
            parse(&config_at(&full, schema_default.clone()))
                .unwrap_or_else(|e| panic!("{dotted}: default refused: {e}"));

            // A value of the wrong type is refused, naming the path.
            let wrong = match prop.get("type").and_then(Value::as_str) {
                Some("string") => json!(12),
                _ => json!("not-a-valid-value"),
            };
            let e = parse(&config_at(&full, wrong))
                .expect_err(&format!("{dotted}: wrong type accepted"));
            assert_eq!(e.path, dotted, "{dotted}: error path ({})", e.message);

            // Bounds agree on both sides of each edge.
            if let Some(min) = prop.get("minimum").and_then(Value::as_f64) {
                let (ok, bad) = if prop["type"] == "integer" {
                    (json!(min as i64), json!(min as i64 - 1))
                } else {
                    (json!(min), json!(min - 0.01))
                };
                parse(&config_at(&full, ok))
                    .unwrap_or_else(|e| panic!("{dotted}: minimum refused: {e}"));
                let e = parse(&config_at(&full, bad))
                    .expect_err(&format!("{dotted}: below minimum accepted"));
                assert_eq!(e.path, dotted);
            }
            if let Some(max) = prop.get("maximum").and_then(Value::as_f64) {
                let (ok, bad) = if prop["type"] == "integer" {
                    (json!(max as u64), json!(max as u64 + 1))
                } else {
                    (json!(max), json!(max + 0.01))
                };
                parse(&config_at(&full, ok))
                    .unwrap_or_else(|e| panic!("{dotted}: maximum refused: {e}"));
                let e = parse(&config_at(&full, bad))
                    .expect_err(&format!("{dotted}: above maximum accepted"));
                assert_eq!(e.path, dotted);
            }
            if let Some(values) = prop.get("enum").and_then(Value::as_array) {
                for v in values {
                    parse(&config_at(&full, v.clone()))
                        .unwrap_or_else(|e| panic!("{dotted}: enum value {v} refused: {e}"));
                }
                assert!(
                    parse(&config_at(&full, json!("__nope__"))).is_err(),
                    "{dotted}: bogus enum accepted"
                );
            }
            if prop.get("pattern").is_some() {
                for bad in ["", "has.dot", "has space"] {
                    let e = parse(&config_at(&full, json!(bad)))
                        .expect_err(&format!("{dotted}: {bad:?} accepted"));
                    assert_eq!(e.path, dotted);
                }
            }
        }
    }
    assert!(leaves >= 12, "walked only {leaves} leaf fields");
}

#[test]
fn every_example_config_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read(&path).unwrap();
        // Secrets named by `{"env": NAME}` come from the VM environment at configure.
        let v: Value = serde_json::from_slice(&text).unwrap();
        set_env_secrets(&v);
        Config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 3, "expected example configs, found {n}");
}

/// Rule items have required fields without defaults, so they are walked here from
/// a valid base rule: each field's wrong type, bounds and enum are refused by Rust
/// at the exact `rules[0].<field>` path, as the schema refuses them.
#[test]
fn limit_rule_fields_are_checked_alike() {
    let root = schema();
    let rule = deref(&root, &root["$defs"]["limit_rule"]).clone();
    let base =
        json!({"name": "r", "key": ["consumer"], "window": "1m", "tokens": 10, "count": "total"});
    let with = |field: &str, v: Value| {
        let mut r = base.clone();
        r[field] = v;
        json!({"routes": {"chat": {"limits": {"rules": [r]}}}})
    };
    parse(&json!({"routes": {"chat": {"limits": {"rules": [base.clone()]}}}})).expect("base rule");
    let required: Vec<&str> = rule["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (field, prop) in rule["properties"].as_object().unwrap() {
        let dotted = format!("routes.chat.limits.rules[0].{field}");
        let wrong = match prop.get("type").and_then(Value::as_str) {
            Some("string") => json!(12),
            _ => json!({"not": "valid"}),
        };
        let e = parse(&with(field, wrong)).expect_err(&dotted);
        assert_eq!(e.path, dotted, "{}", e.message);
        if let Some(min) = prop.get("minimum").and_then(Value::as_i64) {
            parse(&with(field, json!(min))).unwrap_or_else(|e| panic!("{dotted}: {e}"));
            assert_eq!(
                parse(&with(field, json!(min - 1))).unwrap_err().path,
                dotted
            );
        }
        if let Some(values) = prop.get("enum").and_then(Value::as_array) {
            for v in values {
                parse(&with(field, v.clone())).unwrap_or_else(|e| panic!("{dotted}: {e}"));
            }
            assert_eq!(
                parse(&with(field, json!("__nope__"))).unwrap_err().path,
                dotted
            );
        }
        if prop.get("pattern").is_some() {
            for bad in ["", "has.dot", "has space"] {
                assert_eq!(
                    parse(&with(field, json!(bad))).unwrap_err().path,
                    dotted,
                    "{bad:?}"
                );
            }
        }
        if let Some(d) = prop.get("default") {
            let mut r = base.clone();
            r.as_object_mut().unwrap().remove(field.as_str());
            let c = parse(&json!({"defaults": {"limits": {"rules": [r]}}})).unwrap();
            let got = serde_json::to_value(&c.route(None).limits.rules[0]).unwrap();
            assert_eq!(&got[field.as_str()], d, "{dotted}: default");
        }
        if required.contains(&field.as_str()) {
            let mut r = base.clone();
            r.as_object_mut().unwrap().remove(field.as_str());
            let e = parse(&json!({"defaults": {"limits": {"rules": [r]}}})).unwrap_err();
            assert!(
                e.message.contains(&format!("missing field `{field}`")),
                "{}",
                e.message
            );
            assert!(prop.get("default").is_none());
        }
    }
}

/// `provider` is a label or an object (`$defs/provider`): the object's fields, and
/// those of its nested objects, are the Rust ones, unknown ones are refused at their
/// exact path, and the string form keeps its pattern.
#[test]
fn provider_object_fields_are_checked_alike() {
    let root = schema();
    let provider = deref(&root, &root["$defs"]["provider"]).clone();
    let mut nested: Vec<(Vec<&str>, Value)> = vec![(vec![], provider.clone())];
    for (name, prop) in provider["properties"].as_object().unwrap() {
        let prop = deref(&root, prop);
        if prop.get("properties").is_some() {
            nested.push((vec![name.as_str()], prop.clone()));
        }
    }
    assert!(nested.len() >= 5, "provider objects: {}", nested.len());
    for (sub, node) in nested {
        let mut path = vec!["routes", "r1", "provider"];
        path.extend(sub.iter().copied());
        let mut want: Vec<String> = node["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        want.sort();
        assert_eq!(want, rust_fields(&path), "fields differ at {path:?}");
        assert_eq!(node["additionalProperties"], json!(false), "{path:?}");
    }
    let secret = deref(&root, &root["$defs"]["secret"]).clone();
    let mut want: Vec<String> = secret["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    want.sort();
    assert_eq!(
        want,
        rust_fields(&["routes", "r1", "provider", "api_key"]),
        "secret fields"
    );
    // Every kind the schema lists is accepted (with the fields it requires).
    for kind in provider["properties"]["kind"]["enum"].as_array().unwrap() {
        let mut p = json!({"kind": kind, "endpoint": {"authority": "h.example"},
            "aws": {"region": "us-east-1", "access_key_id": {"inline": "AKID"},
                    "secret_access_key": {"inline": "s"}}});
        p["kind"] = kind.clone();
        parse(&json!({"routes": {"r1": {"provider": p}}}))
            .unwrap_or_else(|e| panic!("kind {kind}: {e}"));
    }
    let e = parse(&json!({"routes": {"r1": {"provider": {"kind": "nope"}}}})).unwrap_err();
    assert_eq!(e.path, "routes.r1.provider.kind");
    // The label form keeps its pattern.
    let label = &deref(&root, &root["$defs"]["route_settings"])["properties"]["provider"];
    assert_eq!(label["default"], json!("openai"));
    for bad in ["", "has.dot", "has space"] {
        assert_eq!(
            parse(&json!({"defaults": {"provider": bad}}))
                .unwrap_err()
                .path,
            "defaults.provider"
        );
    }
}

/// Set every environment variable an example names as `{"env": NAME}`.
fn set_env_secrets(v: &Value) {
    match v {
        Value::Object(o) => {
            if let (Some(Value::String(name)), 1) = (o.get("env"), o.len()) {
                std::env::set_var(name, "example-secret");
            }
            o.values().for_each(set_env_secrets);
        }
        Value::Array(a) => a.iter().for_each(set_env_secrets),
        _ => {}
    }
}
