//! AWS Signature Version 4 request signing, for Bedrock's `bedrock-runtime` API.
//!
//! Bedrock authenticates every call with SigV4: the `Authorization` header carries
//! an HMAC over a canonical form of the request (method, path, query, the signed
//! headers, the SHA-256 of the body), keyed by a key derived from the secret access
//! key, the day, the region and the service. tollgate signs after it has rewritten
//! the request, so the signature covers exactly what goes upstream.
//!
//! Checked against AWS's published SigV4 test suite (the `.creq`, `.sts` and
//! `.authz` of get-vanilla, post-x-www-form-urlencoded, post-sts-header-before, ...)
//! and against botocore on a Bedrock-shaped request (see the tests).
//!
//! No clock, no host call: the caller passes the time.

use std::fmt::Write as _;

use crate::crypto::{hex, hmac_sha256, sha256};

/// `x-amz-content-sha256` value for an empty body (SHA-256 of nothing).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// AWS credentials. `Debug` never prints the secrets.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// Access key id (`AKIA...`, `ASIA...`), public: it appears in the header.
    pub access_key_id: &'a str,
    /// Secret access key: only ever an HMAC key.
    pub secret_access_key: &'a str,
    /// Session token of temporary credentials; sent and signed as
    /// `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({}, <redacted>{})",
            self.access_key_id,
            if self.session_token.is_some() {
                ", session token"
            } else {
                ""
            }
        )
    }
}

/// One request to sign, as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The `host` header (`:authority`), e.g. `bedrock-runtime.us-east-1.amazonaws.com`.
    pub host: &'a str,
    /// The path as sent on the wire (already percent-encoded once, e.g.
    /// `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse`). SigV4 for every
    /// service but S3 encodes each segment once more in the canonical request.
    pub path: &'a str,
    /// Query parameters, decoded (`[("Param1", "value1")]`); empty for Bedrock.
    pub query: &'a [(&'a str, &'a str)],
    /// Further headers to sign (any case), e.g. `content-type`. `host`,
    /// `x-amz-date` and `x-amz-security-token` are added by the signer.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub payload: &'a [u8],
    /// Also send and sign `x-amz-content-sha256` (the payload hash the signer
    /// computes anyway), as the AWS SDKs do for Bedrock.
    pub sign_content_sha256: bool,
}

/// Signing scope: where and when.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// AWS region, e.g. `us-east-1`.
    pub region: &'a str,
    /// Signing service name, `bedrock` for Bedrock runtime.
    pub service: &'a str,
    /// Signing time, seconds since the Unix epoch (UTC).
    pub unix_secs: u64,
}

/// The headers to add to the request, plus the intermediate texts (for tests and
/// for debugging a signature mismatch; they hold no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `x-amz-date` value, `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: String,
    /// Hex SHA-256 of the payload (the `x-amz-content-sha256` value).
    pub payload_sha256: String,
    /// The `Authorization` header value.
    pub authorization: String,
    /// The canonical request that was signed.
    pub canonical_request: String,
    /// The string to sign.
    pub string_to_sign: String,
}

/// `YYYYMMDD'T'HHMMSS'Z'` for a Unix time (UTC), without a date library.
pub fn amz_date(unix_secs: u64) -> String {
    let (y, m, d) = civil_from_days(unix_secs / 86_400);
    let s = unix_secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`, unsigned form: the epoch is never before 1970 here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// RFC 3986 percent-encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~`,
/// upper-case hex. `keep_slash` leaves `/` alone (paths).
pub fn uri_encode(out: &mut String, s: &str, keep_slash: bool) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A header value as SigV4 canonicalises it: trimmed, inner runs of whitespace
/// collapsed to one space.
fn push_trimmed(out: &mut String, v: &str) {
    let mut first = true;
    for word in v.split_ascii_whitespace() {
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

/// Sign `req` for `scope` with `creds`.
pub fn sign(req: &Request<'_>, creds: &Credentials<'_>, scope: &Scope<'_>) -> Signed {
    let amz_date = amz_date(scope.unix_secs);
    let date = amz_date.get(..8).unwrap_or_default();
    let payload_sha256 = hex(&sha256(req.payload));

    // Headers: lower-case names, sorted, duplicates joined with ',' in order.
    let mut headers: Vec<(String, &str)> = Vec::with_capacity(req.headers.len() + 3);
    headers.push(("host".to_string(), req.host));
    headers.push(("x-amz-date".to_string(), &amz_date));
    if let Some(t) = creds.session_token {
        headers.push(("x-amz-security-token".to_string(), t));
    }
    if req.sign_content_sha256 {
        headers.push(("x-amz-content-sha256".to_string(), &payload_sha256));
    }
    for (k, v) in req.headers {
        let k = k.to_ascii_lowercase();
        if k != "host"
            && k != "x-amz-date"
            && k != "x-amz-security-token"
            && !(req.sign_content_sha256 && k == "x-amz-content-sha256")
        {
            headers.push((k, v));
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0)); // stable: keeps duplicates in order

    let mut creq = String::with_capacity(256);
    creq.push_str(req.method);
    creq.push('\n');
    if req.path.is_empty() {
        creq.push('/');
    } else {
        uri_encode(&mut creq, req.path, true);
    }
    creq.push('\n');
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&mut ek, k, false);
            uri_encode(&mut ev, v, false);
            (ek, ev)
        })
        .collect();
    query.sort();
    for (i, (k, v)) in query.iter().enumerate() {
        if i > 0 {
            creq.push('&');
        }
        creq.push_str(k);
        creq.push('=');
        creq.push_str(v);
    }
    creq.push('\n');
    let mut signed_headers = String::new();
    let mut prev: Option<&str> = None;
    for (k, v) in &headers {
        if prev == Some(k.as_str()) {
            creq.push(',');
        } else {
            if prev.is_some() {
                creq.push('\n');
                signed_headers.push(';');
            }
            creq.push_str(k);
            creq.push(':');
            signed_headers.push_str(k);
        }
        push_trimmed(&mut creq, v);
        prev = Some(k.as_str());
    }
    creq.push_str("\n\n");
    creq.push_str(&signed_headers);
    creq.push('\n');
    creq.push_str(&payload_sha256);

    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        hex(&sha256(creq.as_bytes()))
    );
    let mut key = Vec::with_capacity(4 + creds.secret_access_key.len());
    key.extend_from_slice(b"AWS4");
    key.extend_from_slice(creds.secret_access_key.as_bytes());
    let k_date = hmac_sha256(&key, date.as_bytes());
    let k_region = hmac_sha256(&k_date, scope.region.as_bytes());
    let k_service = hmac_sha256(&k_region, scope.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id
    );
    Signed {
        amz_date,
        payload_sha256,
        authorization,
        canonical_request: creq,
        string_to_sign,
    }
}

#[cfg(test)]
mod tests;
