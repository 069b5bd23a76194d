//! The `pii` section of a route's settings (public contract:
//! `filters/tollgate.schema.json`, `$defs.pii`).

use std::fmt;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::engine::Engine;

/// What happens to a value a detector found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The detector does not run.
    Off,
    /// Replace with a typed placeholder such as `<EMAIL_1>`.
    #[default]
    Redact,
    /// Keep the last 4 characters, star the rest.
    Mask,
    /// Replace with a keyed HMAC-SHA-256 pseudonym (`<EMAIL:1a2b3c4d5e6f>`), the same
    /// for the same value under the same key across requests.
    Hash,
    /// Refuse the request with a 400 naming the category (never the value).
    Block,
    /// Redact in the request and put the original back where the placeholder
    /// appears in the provider's answer (state lives only in the request).
    Restore,
}

/// Whether the route acts on findings or only reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PiiMode {
    /// Apply each detector's action.
    #[default]
    Enforce,
    /// Only count and report (metrics, filter state): a dry run for roll-outs.
    Detect,
}

macro_rules! detectors {
    ($( $(#[$doc:meta])* $field:ident ),* $(,)?) => {
        /// The action of each built-in detector.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Detectors {
            $( $(#[$doc])* pub $field: Action, )*
        }

        impl Default for Detectors {
            fn default() -> Self {
                Detectors { $( $field: Action::Redact, )* }
            }
        }

        impl Detectors {
            /// The action configured for the built-in detector `name`.
            pub fn get(&self, name: &str) -> Action {
                match name {
                    $( stringify!($field) => self.$field, )*
                    _ => Action::Off,
                }
            }

            /// Every built-in detector name, in config order.
            pub const NAMES: &'static [&'static str] = &[$( stringify!($field), )*];
        }
    };
}

detectors! {
    /// E-mail addresses.
    email,
    /// Phone numbers: E.164 / `00` international, North American, European national.
    phone,
    /// Payment card numbers (12–19 digits, known issuer prefix, Luhn).
    credit_card,
    /// IBANs (country length and mod-97 checked).
    iban,
    /// US Social Security numbers (area, group and serial rules).
    us_ssn,
    /// Canadian Social Insurance numbers (Luhn).
    ca_sin,
    /// Spanish DNI/NIE (mod-23 check letter).
    es_nif,
    /// IPv4 and IPv6 addresses.
    ip_address,
    /// MAC addresses.
    mac_address,
    /// AWS access key ids.
    aws_access_key,
    /// OpenAI API keys.
    openai_api_key,
    /// Anthropic API keys.
    anthropic_api_key,
    /// GitHub tokens (classic and fine-grained).
    github_token,
    /// Slack tokens.
    slack_token,
    /// JSON Web Tokens.
    jwt,
    /// PEM private-key blocks.
    private_key,
    /// The value of `password=`, `api_key:`, `secret=` ... assignments.
    secret_assignment,
}

/// A named detector from config: a regex and its action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    /// Label in metrics and placeholders (`employee_id` → `<EMPLOYEE_ID_1>`).
    pub name: String,
    /// Rust `regex` syntax, matched on bytes.
    pub pattern: String,
    /// What to do with a match.
    #[serde(default)]
    pub action: Action,
    /// Longest match possible, in bytes: a stream holds back this much text so a
    /// match split across chunks is still caught.
    #[serde(default = "default_custom_max_len")]
    pub max_len: u32,
}

fn default_custom_max_len() -> u32 {
    64
}

/// The compiled engine, built once at configure (not part of the config's value:
/// equality and serialisation ignore it).
#[derive(Clone, Default)]
pub struct EngineSlot(pub(crate) Option<Rc<Engine>>);

impl PartialEq for EngineSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for EngineSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "EngineSlot(compiled)"
        } else {
            "EngineSlot(none)"
        })
    }
}

/// PII redaction settings of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    /// Scan prompts (and completions) on this route.
    pub enabled: bool,
    /// Act on findings, or only report them.
    pub mode: PiiMode,
    /// Scan completions too (streams included). Placeholders of `restore`
    /// detectors are put back whatever this says.
    pub scan_responses: bool,
    /// Key of the `hash` pseudonyms (at least 16 bytes when any detector hashes).
    pub hash_key: String,
    /// Most bytes of one text a stream holds back waiting for a token or a
    /// private-key block to end; beyond it the text is released as it is.
    pub max_stream_hold_bytes: u64,
    /// Built-in detectors and their actions.
    pub detectors: Detectors,
    /// Named regex detectors.
    pub custom: Vec<CustomDetector>,
    #[serde(skip)]
    pub(crate) engine: EngineSlot,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            enabled: false,
            mode: PiiMode::Enforce,
            scan_responses: true,
            hash_key: String::new(),
            max_stream_hold_bytes: 8192,
            detectors: Detectors::default(),
            custom: Vec::new(),
            engine: EngineSlot::default(),
        }
    }
}

impl PiiConfig {
    /// Validate and compile (once, at configure). `compiled` holds the configs
    /// compiled so far in this configure: an equal one lends its engine instead of
    /// compiling again. Errors are `(field, message)` relative to the `pii` object.
    pub fn compile(&mut self, compiled: &mut Vec<PiiConfig>) -> Result<(), (String, String)> {
        self.engine = EngineSlot(None);
        if !(256..=1 << 20).contains(&self.max_stream_hold_bytes) {
            return Err((
                "max_stream_hold_bytes".into(),
                "expected 256 to 1048576".into(),
            ));
        }
        let hashes = Detectors::NAMES
            .iter()
            .any(|n| self.detectors.get(n) == Action::Hash)
            || self.custom.iter().any(|c| c.action == Action::Hash);
        if self.enabled && hashes && self.hash_key.len() < 16 {
            return Err((
                "hash_key".into(),
                "a detector uses `hash`: set a secret key of at least 16 bytes (unkeyed hashes of e-mails or card numbers are reversible by dictionary)".into(),
            ));
        }
        for (i, c) in self.custom.iter().enumerate() {
            let ok_name = !c.name.is_empty()
                && c.name.len() <= 32
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && c.name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase());
            if !ok_name {
                return Err((
                    format!("custom[{i}].name"),
                    "expected 1 to 32 characters [a-z0-9_], starting with a letter (it becomes a metric label and placeholder)".into(),
                ));
            }
            if Detectors::NAMES.contains(&c.name.as_str())
                || self.custom.iter().take(i).any(|o| o.name == c.name)
            {
                return Err((
                    format!("custom[{i}].name"),
                    format!("duplicate detector name {:?}", c.name),
                ));
            }
            if !(1..=4096).contains(&c.max_len) {
                return Err((format!("custom[{i}].max_len"), "expected 1 to 4096".into()));
            }
            match regex::bytes::RegexBuilder::new(&c.pattern)
                .unicode(false)
                .size_limit(1 << 20)
                .build()
            {
                Err(e) => {
                    return Err((
                        format!("custom[{i}].pattern"),
                        format!("invalid regex: {e}"),
                    ))
                }
                Ok(r) if r.is_match(b"") => {
                    return Err((
                        format!("custom[{i}].pattern"),
                        "the pattern matches the empty string".into(),
                    ))
                }
                Ok(_) => {}
            }
        }
        if !self.enabled {
            return Ok(());
        }
        if let Some(same) = compiled.iter().find(|c| *c == self) {
            self.engine = same.engine.clone();
            return Ok(());
        }
        let engine = Engine::build(self)?;
        self.engine = EngineSlot(Some(Rc::new(engine)));
        compiled.push(self.clone());
        Ok(())
    }

    /// The compiled engine when PII scanning is on.
    pub fn engine(&self) -> Option<&Rc<Engine>> {
        self.engine.0.as_ref()
    }
}
