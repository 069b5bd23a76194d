#!/usr/bin/env python3
"""Package tollgate.wasm as an OCI image layout, without a container engine.

The image is the "compat" variant of the Wasm OCI image spec: an ordinary OCI
image (`application/vnd.oci.image.manifest.v1+json`) with one gzip layer holding
`plugin.wasm` at the root of its filesystem. Both consumers we target pull it:
  - Istio's WasmPlugin (`url: oci://...`) accepts Docker/OCI images whose single
    layer contains `plugin.wasm`, as well as the Wasm artifact variant;
  - Envoy Gateway's EnvoyExtensionPolicy (`code.type: Image`) documents both the
    Docker-format image (`FROM scratch` + `COPY plugin.wasm ./`) and the OCI
    format, and this layout is what `buildah` produces for that Dockerfile.
The output is an OCI image layout directory (oci-layout, index.json,
blobs/sha256/...). Push it with any registry client, e.g.
    skopeo copy oci:target/oci/tollgate:0.1.0 docker://ghcr.io/acme/tollgate:0.1.0
    oras cp --from-oci-layout target/oci/tollgate:0.1.0 ghcr.io/acme/tollgate:0.1.0

The build is reproducible: tar and gzip headers carry no timestamps or owners,
so the same .wasm always gives the same digests.

    python3 scripts/oci.py [--wasm PATH] [--out DIR] [--tag TAG]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import pathlib
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate.wasm"
DEFAULT_OUT = ROOT / "target" / "oci" / "tollgate"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def cargo_version() -> str:
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "0.0.0"


def layer_tar(wasm: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(wasm: bytes, out: pathlib.Path, tag: str) -> dict:
    """Write the layout; return the index entry of the image manifest."""
    tar = layer_tar(wasm)
    layer = gz(tar)
    config = canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha(tar)]},
        "history": [{"created_by": "scripts/oci.py: plugin.wasm", "empty_layer": False}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{
            "mediaType": LAYER, "digest": sha(layer), "size": len(layer),
            "annotations": {"org.opencontainers.image.title": "plugin.wasm"},
        }],
        "annotations": {
            # Wasm OCI image spec, compat variant.
            "module.wasm.image/variant": "compat",
            "org.opencontainers.image.title": "tollgate",
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.description": "tollgate proxy-wasm filter (plugin.wasm)",
        },
    })
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (layer, config, manifest):
        (blobs / sha(blob).split(":", 1)[1]).write_bytes(blob)
    entry = {
        "mediaType": MANIFEST, "digest": sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["mediaType"] = "application/vnd.oci.image.index.v1+json"
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag] + [entry]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasm", type=pathlib.Path, default=DEFAULT_WASM)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--tag", default=cargo_version())
    args = ap.parse_args()
    if not args.wasm.exists():
        print(f"{args.wasm} not found: run make build", file=sys.stderr)
        return 1
    entry = build(args.wasm.read_bytes(), args.out, args.tag)
    print(f"{args.out}:{args.tag} {entry['digest']} ({args.wasm.stat().st_size} bytes of wasm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
