"""Load the recorded OpenAI exchanges: (name, url, request body, status, billed usage)."""
import json, os, glob, yaml

FIX = os.environ.get("TOLLGATE_FIXTURES", "/work/shared/fixtures/openai-recorded")

def usage_of(body):
    try:
        j = json.loads(body)
        return j.get("usage")
    except Exception:
        pass
    u = None
    for line in body.splitlines():
        if line.startswith("data:"):
            d = line[5:].strip()
            if d == "[DONE]":
                continue
            try:
                j = json.loads(d)
            except Exception:
                continue
            if isinstance(j, dict):
                if j.get("usage"):
                    u = j["usage"]
                if isinstance(j.get("response"), dict) and j["response"].get("usage"):
                    u = j["response"]["usage"]
    return u

def load():
    out = []
    for f in sorted(glob.glob(os.path.join(FIX, "*.yaml"))):
        d = yaml.safe_load(open(f))
        for it in d["interactions"]:
            rq, rs = it["request"], it["response"]
            try:
                body = json.loads(rq["body"])
            except Exception:
                body = None
            out.append(dict(name=os.path.basename(f)[:-5], url=rq["url"], body=body,
                            code=rs.get("code"), usage=usage_of(rs["body"]), raw=rs["body"]))
    return out

if __name__ == "__main__":
    for r in load():
        b = r["body"] if isinstance(r["body"], dict) else {}
        u = r["usage"] or {}
        print(f'{r["name"]:35} {r["code"]} {str(b.get("model")):30} {r["url"][-30:]:30} keys={sorted(b.keys())} pt={u.get("prompt_tokens", u.get("input_tokens"))}')
