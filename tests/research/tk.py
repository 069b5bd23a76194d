"""tiktoken encodings from the vocabularies tiktoken-rs ships (no network needed).

Run scripts with TIKTOKEN_CACHE_DIR pointing at a directory seeded by seed_cache().
"""
import glob, hashlib, os, shutil
CACHE = os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/tmp/tiktoken_cache")

def seed_cache():
    assets = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets"))[0]
    os.makedirs(CACHE, exist_ok=True)
    for n in ["o200k_base", "cl100k_base", "r50k_base", "p50k_base"]:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{n}.tiktoken"
        dst = os.path.join(CACHE, hashlib.sha1(url.encode()).hexdigest())
        if not os.path.exists(dst):
            shutil.copy(f"{assets}/{n}.tiktoken", dst)

seed_cache()
import tiktoken  # noqa: E402

O = tiktoken.get_encoding("o200k_base")
C = tiktoken.get_encoding("cl100k_base")

def n(s, enc=O):
    return len(enc.encode_ordinary(s))
