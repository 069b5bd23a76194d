//! A tiny ordered JSON builder.
//!
//! `serde_json::Value` sorts object keys unless the `preserve_order` feature
//! is on, and turning that feature on here would also turn it on for every
//! other crate in the workspace built in the same cargo invocation. The
//! providers emit keys in a fixed order (`choices` before `usage`, ...), so
//! the mock builds its replies with this instead.

use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// An already-parsed value echoed back (e.g. a tool `input` object).
    Value(serde_json::Value),
}

impl J {
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::F32(f) => out.push_str(&float_or_null(serde_json::to_string(f))),
            J::F64(f) => out.push_str(&float_or_null(serde_json::to_string(f))),
            J::Str(s) => out.push_str(&quote(s)),
            J::Arr(items) => {
                out.push('[');
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    it.write(out);
                }
                out.push(']');
            }
            J::Obj(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(k));
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
            J::Value(v) => {
                out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
            }
        }
    }

    /// Appends a key to an object (no-op on other variants).
    pub fn push(&mut self, key: &str, value: impl Into<J>) {
        if let J::Obj(pairs) = self {
            pairs.push((key.to_string(), value.into()));
        }
    }
}

fn float_or_null(r: Result<String, serde_json::Error>) -> String {
    r.unwrap_or_else(|_| "null".into())
}

pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_string())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<&String> for J {
    fn from(s: &String) -> J {
        J::Str(s.clone())
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
impl From<i64> for J {
    fn from(i: i64) -> J {
        J::Int(i)
    }
}
impl From<u64> for J {
    fn from(i: u64) -> J {
        J::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<usize> for J {
    fn from(i: usize) -> J {
        J::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<f32> for J {
    fn from(f: f32) -> J {
        J::F32(f)
    }
}
impl From<f64> for J {
    fn from(f: f64) -> J {
        J::F64(f)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl From<serde_json::Value> for J {
    fn from(v: serde_json::Value) -> J {
        J::Value(v)
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(o: Option<T>) -> J {
        match o {
            Some(v) => v.into(),
            None => J::Null,
        }
    }
}

/// `obj! { "k" => v, ... }` builds an ordered JSON object.
#[macro_export]
macro_rules! obj {
    () => { $crate::json::J::Obj(Vec::new()) };
    ($($k:expr => $v:expr),+ $(,)?) => {
        $crate::json::J::Obj(vec![$(($k.to_string(), $crate::json::J::from($v))),+])
    };
}

/// `arr![a, b]` builds a JSON array.
#[macro_export]
macro_rules! arr {
    () => { $crate::json::J::Arr(Vec::new()) };
    ($($v:expr),+ $(,)?) => { $crate::json::J::Arr(vec![$($crate::json::J::from($v)),+]) };
}

#[cfg(test)]
mod tests {
    use super::J;

    #[test]
    fn keeps_key_order_and_escapes() {
        let j = obj! {"z" => 1i64, "a" => "é\"\n", "n" => J::Null, "f" => 0.5f32, "l" => arr![true, J::Null]};
        assert_eq!(
            j.to_json(),
            r#"{"z":1,"a":"é\"\n","n":null,"f":0.5,"l":[true,null]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&j.to_json()).unwrap();
        assert_eq!(v["a"], "é\"\n");
    }

    #[test]
    fn non_finite_floats_are_null() {
        assert_eq!(J::F32(f32::NAN).to_json(), "null");
    }
}
