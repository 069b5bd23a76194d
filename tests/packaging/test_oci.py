"""`make oci` output, read back the way a registry client would: index.json ->
manifest -> config and layer blobs, every digest recomputed (sha256) and every
size checked, the single layer unpacked to exactly `plugin.wasm` with the
filter's bytes, the config's diff_id matching the uncompressed layer, and the
build reproducible (same wasm, same digests)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pathlib
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
REAL_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate.wasm"
# A valid empty module when the filter is not built: the packaging is the same.
TINY_WASM = b"\0asm\x01\0\0\0"


@pytest.fixture(scope="module")
def wasm(tmp_path_factory):
    p = tmp_path_factory.mktemp("wasm") / "tollgate.wasm"
    p.write_bytes(REAL_WASM.read_bytes() if REAL_WASM.exists() else TINY_WASM)
    return p


def build(wasm, out, tag="9.9.9"):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "oci.py"), "--wasm", str(wasm),
                        "--out", str(out), "--tag", tag], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def blob(layout, desc):
    algo, hexd = desc["digest"].split(":")
    assert algo == "sha256"
    data = (layout / "blobs" / "sha256" / hexd).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexd, "blob content matches its digest"
    assert len(data) == desc["size"], "descriptor size is the blob size"
    return data


def test_layout_manifest_config_and_layer(wasm, tmp_path):
    layout = build(wasm, tmp_path / "oci")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "9.9.9"
    manifest = json.loads(blob(layout, entry))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == entry["mediaType"]
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer = blob(layout, layer_desc)
    tar_bytes = gzip.decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"], "one file, at the root"
        assert members[0].isfile() and members[0].mode == 0o644
        assert tar.extractfile(members[0]).read() == wasm.read_bytes()
    config = json.loads(blob(layout, manifest["config"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}
    assert len(list((layout / "blobs" / "sha256").iterdir())) == 3


def test_reproducible_and_tags_accumulate(tmp_path):
    wasm = tmp_path / "tiny.wasm"
    wasm.write_bytes(TINY_WASM)
    a = json.loads((build(wasm, tmp_path / "a") / "index.json").read_text())["manifests"][0]["digest"]
    b = json.loads((build(wasm, tmp_path / "b") / "index.json").read_text())["manifests"][0]["digest"]
    assert a == b, "same wasm, same image digest"
    build(wasm, tmp_path / "a", tag="latest")
    refs = [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads((tmp_path / "a" / "index.json").read_text())["manifests"]]
    assert sorted(refs) == ["9.9.9", "latest"]
    other = tmp_path / "other.wasm"
    other.write_bytes(TINY_WASM + b"\0\0")
    c = json.loads((build(other, tmp_path / "c") / "index.json").read_text())["manifests"][0]["digest"]
    assert c != a
