"""PII redaction end to end: the official OpenAI SDK through a real Envoy 1.40
running tollgate.wasm, against the mock provider. What the provider received is
read back from the mock (`/_mock/last`); `x-mock-echo: 1` makes the mock answer
with the user's message as it arrived, so restore is seen by the client.

The labelled corpus is generated here with Faker (several locales; prose, code
and JSON-in-text; plus hard negatives) and sent through the same Envoy; recall and
precision per category are printed and checked (>= 0.99 for the structured ones)."""
from __future__ import annotations

import base64
import json
import random
import re
import string
import time

import httpx
import openai
import pytest
from faker import Faker

EMAIL = "jane.roe@example.org"
CARD = "4111 1111 1111 1111"
KEY = "0123456789abcdef-e2e-hash-key"

CONFIG = {
    "defaults": {
        "max_request_bytes": 1048000,
        "pii": {
            "enabled": True,
            "hash_key": KEY,
            "detectors": {
                "email": "restore",
                "phone": "restore",
                "credit_card": "block",
                "us_ssn": "block",
                "ip_address": "hash",
                "iban": "mask",
            },
        },
    },
}
# Every detector redacts: the corpus run.
CORPUS_CONFIG = {"defaults": {"max_request_bytes": 1048000, "pii": {"enabled": True}}}
ECHO = {"x-mock-echo": "1"}


@pytest.fixture(scope="module")
def env(envoy_with):
    return envoy_with(CONFIG, name="pii")


@pytest.fixture(scope="module")
def client(env):
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0)


def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_redact_reaches_provider_and_restore_answers_non_streaming(env, client):
    prompt = f"Write to {EMAIL} or call +1 415-555-2671; IBAN DE89370400440532013000."
    r = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": prompt}], extra_headers=ECHO
    )
    sent = user_text(env.mock.last_body())
    assert EMAIL not in sent and "415-555-2671" not in sent and "DE8937" not in sent, sent
    assert sent == "Write to <EMAIL_1> or call <PHONE_1>; IBAN ******************3000.", sent
    # The echo comes back with the restorable placeholders put back, the mask kept.
    assert r.choices[0].message.content == (
        f"Write to {EMAIL} or call +1 415-555-2671; IBAN ******************3000."
    )


def test_restore_streaming_with_placeholders_split_across_chunks(env, client):
    prompt = f"Contact {EMAIL}, backup ops@corp.example, phone +44 20 7946 0958. Thanks {EMAIL}!"
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": prompt}], stream=True, extra_headers=ECHO
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    sent = user_text(env.mock.last_body())
    assert sent == "Contact <EMAIL_1>, backup <EMAIL_2>, phone <PHONE_1>. Thanks <EMAIL_1>!", sent
    # The mock streams 4 characters per chunk, so placeholders arrive split.
    assert "".join(pieces) == prompt


def test_block_names_the_category_never_the_value(env, client):
    env.mock.reset()  # the mock keeps only its last 256 requests
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"charge {CARD} please"}]
        )
    msg = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
    assert "credit_card" in msg and "4111" not in msg, msg
    assert e.value.status_code == 400
    assert len(env.mock.requests()) == 0, "a blocked request must not reach the provider"


def test_hash_pseudonyms_are_stable_across_requests(env, client):
    def sent_for(ip):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"server {ip} is down"}]
        )
        return user_text(env.mock.last_body())

    a1, a2, b = sent_for("10.20.30.40"), sent_for("10.20.30.40"), sent_for("10.20.30.41")
    assert re.fullmatch(r"server <IP_ADDRESS:[0-9a-f]{12}> is down", a1), a1
    assert a1 == a2 and a1 != b


def test_metrics_and_filter_state_count_categories_never_values(env, client):
    mark = env.mark()
    client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"{EMAIL} and 10.0.0.1"}],
        extra_headers=ECHO,
    )
    (entry,) = env.new_entries(mark, 1)
    state = entry["pii"]
    assert "email:1/0" in state and "ip_address:1/0" in state and "restored=1" in state, state
    assert EMAIL not in json.dumps(entry)
    stats = env.stats()
    assert stats.get("tollgate_pii_detections", pii_category="email", direction="request") >= 1
    assert stats.get("tollgate_pii_detections", pii_category="ip_address", direction="request") >= 1


def test_body_stays_valid_and_non_text_fields_untouched(env, client):
    image = "data:image/png;base64," + base64.b64encode(f"{EMAIL} AKIAIOSFODNN7EXAMPLE".encode()).decode()
    client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Escalate to sec\u0040corp.example"},
            {"role": "user", "content": [
                {"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"},
                {"type": "image_url", "image_url": {"url": image}},
            ]},
        ],
        user=EMAIL,
    )
    body = env.mock.last_body()
    assert body["messages"][0]["content"] == "Escalate to <EMAIL_1>"
    assert body["messages"][1]["content"][0]["text"] == "key <AWS_ACCESS_KEY_1>"
    assert body["messages"][1]["content"][1]["image_url"]["url"] == image
    assert body["user"] == EMAIL, "only model text is scanned"


def test_keys_written_with_escapes_do_not_hide_text(env):
    # `"m\u0065ssages"` is `messages` to the provider's JSON parser: the text
    # under it must be scanned like any other prompt.
    raw = (
        '{"model":"gpt-4o","m\\u0065ssages":[{"role":"user",'
        f'"c\\u006fntent":"Write to {EMAIL} now"}}]}}'
    )
    assert json.loads(raw)["messages"][0]["content"] == f"Write to {EMAIL} now"
    r = httpx.post(env.base_url + "/v1/chat/completions", content=raw,
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    sent = env.mock.last_body()
    assert sent["messages"][0]["content"] == "Write to <EMAIL_1> now", sent


# --------------------------------------------------------------- big answers, Responses

# One line of a scripted answer: a placeholder of the request's address, and
# values the request never had (a card, an AWS key, another address).
BIG_LINE = "Dear <EMAIL_1>, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE, cc ann@example.net."
BIG_REPEAT = 15000  # ~1.3 MB: over the 512 KiB hold cap and Envoy's 1 MiB buffer limit


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_big_json_answers_are_restored_and_scanned_as_they_pass(env, client, framing):
    headers = {"x-mock-reply-text": BIG_LINE, "x-mock-reply-repeat": str(BIG_REPEAT)}
    if framing == "chunked":
        headers["x-mock-fault"] = "chunked"  # no content-length: size unknown up front
    mark = env.mark()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"I am {EMAIL}"}], extra_headers=headers,
    )
    assert user_text(env.mock.last_body()) == "I am <EMAIL_1>"
    body = raw.http_response.content
    assert len(body) > 1024 * 1024, len(body)
    # Rewritten as it passed: the declared length is gone (not a stale one).
    assert "content-length" not in raw.headers or int(raw.headers["content-length"]) == len(body)
    r = raw.parse()
    lines = r.choices[0].message.content.split("\n")
    assert len(lines) == BIG_REPEAT
    want = f"Dear {EMAIL}, card <CREDIT_CARD_1>, key <AWS_ACCESS_KEY_1>, cc <EMAIL_2>."
    bad = [i for i, line in enumerate(lines) if line != want]
    assert not bad, (len(bad), lines[bad[0]] if bad else None)
    for leak in (b"4111 1111", b"AKIAIOSFODNN7EXAMPLE", b"ann@example.net", b"<EMAIL_1>"):
        assert leak not in body, leak
    assert r.usage is not None and r.usage.completion_tokens > BIG_REPEAT
    (entry,) = env.new_entries(mark, 1)
    state = entry["pii"]
    assert f"credit_card:0/{BIG_REPEAT}" in state and f"restored={BIG_REPEAT}" in state, state


def _responses_events(client, **kw):
    stream = client.responses.create(model="gpt-4o", stream=True, **kw)
    return list(stream)


def test_responses_stream_restores_placeholders_split_across_events(env, client):
    prompt = f"Contact {EMAIL} or +1 415-555-2671, backup ops@corp.example. Thanks {EMAIL}!"
    events = _responses_events(client, input=prompt, extra_headers=ECHO)
    sent = env.mock.last_body()["input"]
    assert sent == "Contact <EMAIL_1> or <PHONE_1>, backup <EMAIL_2>. Thanks <EMAIL_1>!", sent
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # The mock streams 4 characters per delta: every placeholder arrives split.
    assert "".join(deltas) == prompt
    assert not any("<" in d for d in deltas), deltas
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == prompt
    (completed,) = [e for e in events if e.type == "response.completed"]
    assert completed.response.output_text == prompt
    assert completed.response.usage is not None and completed.response.usage.output_tokens > 0
    for e in events:
        assert "<EMAIL_" not in e.model_dump_json() and "<PHONE_" not in e.model_dump_json(), e.type


def test_responses_stream_helper_and_new_values_in_the_answer(env, client):
    # The SDK's accumulating helper sees a consistent stream too.
    with client.responses.stream(model="gpt-4o", input=f"I am {EMAIL}", extra_headers=ECHO) as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.output_text == f"I am {EMAIL}"
    # Values the provider made up are redacted in deltas and in the final texts.
    line = "key AKIAIOSFODNN7EXAMPLE for <EMAIL_1> and ann@example.net"
    events = _responses_events(
        client, input=f"I am {EMAIL}", extra_headers={"x-mock-reply-text": line},
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    want = f"key <AWS_ACCESS_KEY_1> for {EMAIL} and <EMAIL_2>"
    assert text == want
    (completed,) = [e for e in events if e.type == "response.completed"]
    assert completed.response.output_text == want
    for e in events:
        dump = e.model_dump_json()
        assert "AKIAIOSFODNN7EXAMPLE" not in dump and "ann@example.net" not in dump, e.type


def test_responses_non_streaming_answer_is_restored(env, client):
    r = client.responses.create(model="gpt-4o", input=f"Mail {EMAIL}", extra_headers=ECHO)
    assert env.mock.last_body()["input"] == "Mail <EMAIL_1>"
    assert r.output_text == f"Mail {EMAIL}"


# ----------------------------------------------------------------------------- corpus

LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "en_CA"]
STRUCTURED = [
    "email", "credit_card", "iban", "us_ssn", "ca_sin", "es_nif", "ip_address", "mac_address",
    "aws_access_key", "openai_api_key", "anthropic_api_key", "github_token", "slack_token", "jwt",
    "private_key",
]
TAG = {
    "email": "EMAIL", "phone": "PHONE", "credit_card": "CREDIT_CARD", "iban": "IBAN", "us_ssn": "US_SSN",
    "ca_sin": "CA_SIN", "es_nif": "ES_NIF", "ip_address": "IP_ADDRESS", "mac_address": "MAC_ADDRESS",
    "aws_access_key": "AWS_ACCESS_KEY", "openai_api_key": "OPENAI_API_KEY",
    "anthropic_api_key": "ANTHROPIC_API_KEY", "github_token": "GITHUB_TOKEN", "slack_token": "SLACK_TOKEN",
    "jwt": "JWT", "private_key": "PRIVATE_KEY", "secret_assignment": "SECRET",
}


def _b64url(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "-_") for _ in range(n))


def _values(fakes: dict[str, Faker], rng: random.Random) -> list[tuple[str, str]]:
    """(category, value) pairs from Faker's providers (secrets from Faker's RNG in
    the vendors' documented shapes)."""
    out = []
    anyloc = lambda: fakes[rng.choice(LOCALES)]  # noqa: E731
    alnum = string.ascii_letters + string.digits
    for _ in range(100):
        out.append(("email", anyloc().email()))
        out.append(("email", anyloc().company_email()))
        out.append(("credit_card", anyloc().credit_card_number()))
        out.append(("iban", fakes[rng.choice(["de_DE", "fr_FR", "es_ES", "en_GB", "nl_NL", "it_IT"])].iban()))
        out.append(("us_ssn", fakes["en_US"].ssn()))
        out.append(("ca_sin", fakes["en_CA"].ssn()))
        out.append(("es_nif", rng.choice([fakes["es_ES"].nif(), fakes["es_ES"].nie()])))
        out.append(("ip_address", anyloc().ipv4()))
        out.append(("ip_address", anyloc().ipv6()))
        out.append(("mac_address", anyloc().mac_address()))
        out.append(("phone", fakes[rng.choice(["en_US", "en_GB", "de_DE", "fr_FR"])].phone_number()))
        out.append(("aws_access_key", "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))))
        out.append(("openai_api_key", "sk-proj-" + "".join(rng.choice(alnum) for _ in range(48)) + "7Q"))
        out.append(("anthropic_api_key", "sk-ant-api03-" + _b64url(rng, 93) + "AA"))
        out.append(("github_token", "ghp_" + "".join(rng.choice(alnum) for _ in range(36))))
        out.append(("slack_token", f"xoxb-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**12, 10**13)}-" + "".join(rng.choice(alnum) for _ in range(24))))
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        payload = base64.urlsafe_b64encode(json.dumps({"sub": anyloc().user_name(), "iat": rng.randrange(10**9)}).encode()).decode().rstrip("=")
        out.append(("jwt", f"{header}.{payload}.{_b64url(rng, 43)}"))
        body = base64.b64encode(rng.randbytes(rng.choice([120, 300]))).decode()
        lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
        kind = rng.choice(["RSA ", "EC ", ""])
        out.append(("private_key", f"-----BEGIN {kind}PRIVATE KEY-----\n{lines}\n-----END {kind}PRIVATE KEY-----"))
    return out


def _negatives(fakes: dict[str, Faker], rng: random.Random) -> list[str]:
    f = fakes["en_US"]
    out = []
    for _ in range(150):
        out += [
            f"Order #{f.numerify('#########')} ships {f.date()} at {f.time()}.",
            f"Upgrade to v{rng.randrange(1, 30)}.{rng.randrange(0, 99)}.{rng.randrange(0, 300)} before {f.iso8601()}.",
            f"Request id {f.uuid4()} finished in {rng.randrange(1, 999)} ms.",
            f"Invoice INV-{f.year()}-{f.numerify('######')} totals {f.pricetag()}; ISBN {f.isbn13()}.",
            f"{f.date_time().strftime('%Y-%m-%d %H:%M:%S')} build {rng.randrange(1, 20)}.{rng.randrange(0, 9)}.{rng.randrange(10000, 30000)}.{rng.randrange(1, 5000)} ok",
            f"Ticket {f.bothify('??-####').upper()} for {f.name()} at {f.street_address()}, {f.postcode()}.",
        ]
    return out


def _contexts(fake: Faker, value: str, rng: random.Random) -> tuple[str, str]:
    """The value in prose, code or JSON-in-text, and the value as written there
    (JSON-in-text escapes a private key's newlines)."""
    kind = rng.randrange(3)
    if kind == 0:
        return f"{fake.sentence()} {value} {fake.sentence()}", value
    if kind == 1:
        return f'user = {{"name": "{fake.first_name()}", "value": "{value}"}}\nprint(user)', value
    shown = json.dumps(value, ensure_ascii=False)[1:-1]
    return json.dumps({"note": fake.sentence(), "field": value}, ensure_ascii=False), shown


def _corpus() -> list[tuple[str | None, str | None, str]]:
    """(category or None, value as written, text): the labelled samples, shuffled."""
    rng = random.Random(4)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakes.values()):
        f.seed_instance(100 + i)
    samples = []
    for cat, value in _values(fakes, rng):
        text, shown = _contexts(fakes[rng.choice(LOCALES)], value, rng)
        samples.append((cat, shown, text))
    for text in _negatives(fakes, rng):
        samples.append((None, None, text))
    rng.shuffle(samples)
    return samples


# Presidio's recognizers for our categories (secrets have none).
PRESIDIO = {
    "email": ["EmailRecognizer"],
    "phone": ["PhoneRecognizer"],
    "credit_card": ["CreditCardRecognizer"],
    "iban": ["IbanRecognizer"],
    "us_ssn": ["UsSsnRecognizer"],
    "ca_sin": ["CaSinRecognizer"],
    "es_nif": ["EsNifRecognizer", "EsNieRecognizer"],
    "ip_address": ["IpRecognizer"],
    "mac_address": ["MacAddressRecognizer"],
}


def _presidio_scores(samples) -> tuple[dict[str, tuple[float, float]] | None, str]:
    """Per category (recall, precision) of Microsoft Presidio's own recognizers on
    the same samples, or None and why not. The recognizers are called directly
    (no NLP engine, so no spaCy model): every result they return counts, as with
    AnalyzerEngine's default score threshold of 0, and each runs whatever its
    language. A value counts as found when a result of its category covers it;
    any other result of a category is a false positive for it."""
    import os

    # The e-mail recognizer's tldextract would fetch the public suffix list:
    # use the snapshot bundled with the pinned version (offline, reproducible).
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    try:
        import presidio_analyzer
        from presidio_analyzer import EntityRecognizer
        from presidio_analyzer import predefined_recognizers as pr
    except ImportError as e:
        return None, f"presidio-analyzer not importable ({e}); pip install -r tests/requirements.txt"
    recognizers = {c: [getattr(pr, name)() for name in names] for c, names in PRESIDIO.items()}
    tp = {c: 0 for c in PRESIDIO}
    n = {c: 0 for c in PRESIDIO}
    fp = {c: 0 for c in PRESIDIO}
    for cat, value, text in samples:
        at = text.find(value) if value else -1
        span = (at, at + len(value)) if at >= 0 else None
        if cat in n:
            n[cat] += 1
        for c, recs in recognizers.items():
            found = [res for r in recs for res in r.analyze(text, r.supported_entities, None)]
            hit = False
            # As AnalyzerEngine does: duplicates and contained results dropped.
            for res in EntityRecognizer.remove_duplicates(found):
                if c == cat and span and res.start < span[1] and res.end > span[0]:
                    hit = hit or (res.start <= span[0] and res.end >= span[1])
                else:
                    fp[c] += 1
            if hit:
                tp[c] += 1
    scores = {}
    for c in PRESIDIO:
        recall = tp[c] / n[c] if n[c] else 1.0
        precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 1.0
        scores[c] = (recall, precision)
    version = getattr(presidio_analyzer, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("presidio-analyzer")
    return scores, f"presidio-analyzer {version}, pattern recognizers only"


def test_faker_corpus_recall_and_precision(envoy_with, mock, capsys):
    env = envoy_with(CORPUS_CONFIG, name="pii-corpus")
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0)
    samples = _corpus()
    tp = {c: 0 for c in TAG}
    n = {c: 0 for c in TAG}
    fp = {c: 0 for c in TAG}
    misses = []
    placeholder = re.compile(r"<([A-Z_]+?)_\d+>")
    batch = 50
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": t} for _, _, t in part]
        )
        got = [m["content"] for m in env.mock.last_body()["messages"]]
        assert len(got) == len(part)
        for (cat, value, text), out in zip(part, got):
            found = placeholder.findall(out)
            if cat is not None:
                n[cat] += 1
                expected_tag = TAG[cat]
                # Caught: the value is gone, and the text around it is intact.
                pre, _, post = text.partition(value)
                ok = value not in out and out.startswith(pre) and out.endswith(post) and \
                    re.fullmatch(rf"<{expected_tag}_\d+>", out[len(pre):len(out) - len(post)] if post else out[len(pre):])
                if ok:
                    tp[cat] += 1
                    found.remove(expected_tag)
                else:
                    misses.append((cat, value, out[:160]))
            for tag in found:
                cat_of = next((c for c, t in TAG.items() if t == tag), None)
                if cat_of:
                    fp[cat_of] += 1
                    misses.append(("FP:" + cat_of, text[:120], out[:160]))

    rows = []
    for c in TAG:
        if n[c] == 0 and fp[c] == 0:
            continue
        recall = tp[c] / n[c] if n[c] else 1.0
        precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 1.0
        rows.append((c, n[c], recall, precision))
    presidio, about = _presidio_scores(samples)
    with capsys.disabled():
        print(f"\nPII corpus through Envoy: {len(samples)} samples, {len(LOCALES)} locales")
        print(f"Presidio: {about}" if presidio else f"Presidio comparison skipped: {about}")
        print(f"{'category':<20}{'n':>6}{'recall':>9}{'precision':>11}   {'Presidio':>8}{'recall':>8}{'precision':>11}")
        for c, cnt, r, p in rows:
            flag = "" if c in STRUCTURED else "  (not gated)"
            theirs = f"{'':>8}{presidio[c][0]:>8.3f}{presidio[c][1]:>11.3f}" if presidio and c in presidio else f"{'':>8}{'—':>8}{'—':>11}"
            print(f"{c:<20}{cnt:>6}{r:>9.3f}{p:>11.3f}   {theirs}{flag}")
        for m in misses[:15]:
            print("  miss:", m)
    if presidio:
        # The comparison itself is wired right: Presidio finds what it is built for.
        assert presidio["email"][0] > 0.9 and presidio["iban"][0] > 0.9, presidio
    for c, cnt, r, p in rows:
        if c in STRUCTURED:
            assert r >= 0.99 and p >= 0.99, (c, r, p)


@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_on_a_pii_route_fails_closed(env, client, stream):
    """A provider that compresses although tollgate dropped accept-encoding: the
    answer cannot be restored or scanned, so the client gets a 502 in its dialect,
    never the unchecked bytes; the request is still metered."""
    mark = env.mark()
    with pytest.raises(openai.APIStatusError) as e:
        r = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"Mail {EMAIL}"}], stream=stream,
            extra_headers={**ECHO, "x-mock-fault": "gzip"})
        if stream:
            list(r)
    assert e.value.status_code == 502
    err = e.value.response.json()["error"]
    assert err["code"] == "upstream_unreadable" and "content-encoding: gzip" in err["message"]
    (entry,) = env.new_entries(mark, 1)
    assert str(entry["status"]) == "502"
    assert int(entry["prompt_tokens"]) > 0, entry  # metered all the same


def test_pii_route_with_metering_off_redacts_and_restores_but_reports_no_usage(envoy_with):
    """`metering.enabled: false` on a redacting route: the PII work is unchanged,
    but no x-llm-* header, no llm.* token filter state, no token metric."""
    env = envoy_with({"defaults": {"metering": {"enabled": False},
                                   "pii": {"enabled": True, "detectors": {"email": "restore"}}}},
                     name="pii-unmetered")
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0)
    mark = env.mark()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"Mail {EMAIL} today."}],
        extra_headers=ECHO)
    assert user_text(env.mock.last_body()) == "Mail <EMAIL_1> today."
    assert raw.parse().choices[0].message.content == f"Mail {EMAIL} today."
    assert not [h for h in raw.headers if h.lower().startswith("x-llm-")], dict(raw.headers)
    (entry,) = env.new_entries(mark, 1)
    assert entry["prompt_tokens"] in ("-", None, ""), entry
    assert "email:1/0" in entry["pii"], entry
    time.sleep(1.5)  # token counters are written on the 1 s tick
    stats = env.stats()
    assert stats.get("tollgate_gen_ai_client_token_usage") == 0
    assert stats.get("tollgate_pii_detections", pii_category="email", direction="request") == 1
