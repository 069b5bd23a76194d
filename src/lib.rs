//! tollgate: an AI-gateway filter for proxy-wasm hosts (Envoy, Kong).
//!
//! The data path reads top to bottom through the modules:
//! request in → [`dialect`] (which API, parse) → features ([`tokens`] count,
//! [`limits`] admission, [`pii`] redaction, [`providers`] rewriting) → [`usage`]
//! (what the provider billed) → response out (limits trued up to it, PII restored,
//! the answer translated back).
//! [`metering`] ties those together per request with no host calls, so it is
//! unit-tested natively; [`host`] is the small trait surface the core needs from a
//! gateway, and `adapter` (wasm32 only) is the only code that touches proxy-wasm.

#![warn(missing_docs)]
// A panic kills the worker's VM and fails every request on it, so the library
// (tests apart) has no unwrap, expect, panic or unchecked index: `make test` runs
// clippy with these as errors.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod bytescan;
pub mod config;
pub mod crypto;
pub mod decimal;
pub mod dialect;
pub mod hash;
pub mod host;
pub mod limits;
pub mod metering;
pub mod pii;
pub mod providers;
#[doc(hidden)]
pub mod testing;
pub mod tokens;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod adapter;
