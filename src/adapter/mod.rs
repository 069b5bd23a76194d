//! proxy-wasm adapter (placeholder)
