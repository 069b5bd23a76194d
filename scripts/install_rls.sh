#!/usr/bin/env bash
# Installs what tollgate's global-limit e2e tests need, cached under .cache/:
#   redis-server (Debian package) and rls-limitador (tools/rls-limitador: the Limitador
#   library with Redis storage behind Envoy's RLS gRPC API and Limitador's HTTP API).
# Idempotent: a second run with nothing changed costs a cargo no-op check.
#
# The build (about 240 crates: tonic, redis, cel's generated parser...) is cached OUTSIDE
# the checkout, in $TOLLGATE_CACHE_DIR (default ~/.cache/tollgate), so fresh clones on
# the same machine (CI runs in one) reuse it; only the binary is copied into .cache/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# redis-rs is built with native-tls by limitador: openssl headers and pkg-config.
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install_rls: apt-get install ${need_apt[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

start=$(date +%s)
cache="${TOLLGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}/rls-limitador"
mkdir -p "$cache"
# The published limitador crate, with the feature-gate fix (see
# tools/rls-limitador/Cargo.toml): fetched by cargo from crates.io, patched in the cache.
src="$cache/limitador-0.14.0"
if [ ! -f "$src/.patched" ]; then
    fetch="$cache/fetch"
    mkdir -p "$fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n[dependencies]\nlimitador = { version = "=0.14.0", default-features = false }\n' >"$fetch/Cargo.toml"
    : >"$fetch/src/lib.rs"
    cargo fetch --quiet --manifest-path "$fetch/Cargo.toml"
    registry_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/limitador-0.14.0 | head -1)
    rm -rf "$src" && cp -r "$registry_src" "$src"
    # `storage::keys::bin` (and `Counter::variables_for_key`, which it uses) are used
    # unconditionally but gated on disk_storage; ungate both.
    python3 - "$src/src" <<'PY'
import sys
root = sys.argv[1]
for rel, gate in [
    ("storage/keys.rs", '#[cfg(feature = "disk_storage")]\npub mod bin {'),
    ("counter.rs", '    #[cfg(feature = "disk_storage")]\n    pub(crate) fn variables_for_key('),
]:
    p = f"{root}/{rel}"
    s = open(p).read()
    assert gate in s, f"limitador source changed: re-check the patch of {rel}"
    open(p, "w").write(s.replace(gate, gate.split("\n", 1)[1], 1))
PY
    touch "$src/.patched"
fi
# limitador's own dead-code warnings are noise here: the log is shown only on failure.
if ! CARGO_TARGET_DIR="$cache/target" \
    cargo build --release --locked --manifest-path tools/rls-limitador/Cargo.toml \
    --config "patch.crates-io.limitador.path=\"$src\"" >"$cache/build.log" 2>&1; then
    tail -60 "$cache/build.log" >&2
    echo "install_rls: build failed (full log: $cache/build.log)" >&2
    exit 1
fi
mkdir -p .cache/rls-limitador/bin
cp -f "$cache/target/release/rls-limitador" .cache/rls-limitador/bin/
echo "install_rls: .cache/rls-limitador/bin/rls-limitador ready ($(( $(date +%s) - start )) s)" >&2
