"""OpenAI's own `tiktoken` (PyPI), run offline, as the reference for token counts.

tiktoken downloads its vocabularies on first use; there is no network here, so the
cache is seeded with the identical files tiktoken-rs ships (`assets/*.tiktoken`,
fetched by cargo as part of the build). tiktoken checks each file's SHA-256 against
its own pinned hash, so a wrong file cannot pass silently.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tiktoken"
BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def _assets() -> pathlib.Path:
    home = pathlib.Path(os.environ.get("CARGO_HOME", pathlib.Path.home() / ".cargo"))
    found = sorted(glob.glob(str(home / "registry" / "src" / "*" / "tiktoken-rs-*" / "assets")))
    if not found:
        raise RuntimeError("tiktoken-rs sources not found in the cargo registry: run `cargo fetch` first")
    return pathlib.Path(found[-1])


def seed_cache() -> pathlib.Path:
    """Copy the vocabularies into tiktoken's cache layout (sha1 of the blob URL)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    assets = _assets()
    for name in ("o200k_base", "cl100k_base"):
        dst = CACHE / hashlib.sha1(BLOB.format(name).encode()).hexdigest()
        if not dst.exists():
            shutil.copy(assets / f"{name}.tiktoken", dst)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(CACHE)
    return CACHE


def encoding(name: str):
    """A tiktoken Encoding, loaded offline."""
    seed_cache()
    import tiktoken

    return tiktoken.get_encoding(name)


def chat_prompt_tokens_gpt4o(messages: list[dict]) -> int:
    """OpenAI's published rule for gpt-4o-family chat prompts (3 tokens per message,
    its role and content, 1 per name, 3 to prime the reply), on o200k_base."""
    enc = encoding("o200k_base")
    n = 3
    for m in messages:
        n += 3
        for key, value in m.items():
            if isinstance(value, str):
                n += len(enc.encode_ordinary(value))
                if key == "name":
                    n += 1
    return n
