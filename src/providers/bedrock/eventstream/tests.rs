use super::*;

/// An encoder written apart from [`encode`], straight from the AWS format
/// description, with its own CRC-32 (bitwise, no table), so the decoder is not
/// only checked against its own mirror image.
fn independent_frame(headers: &[(&str, u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c: u32 = 0xFFFF_FFFF;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                let mask = (c & 1).wrapping_neg();
                c = (c >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !c
    }
    let mut h = Vec::new();
    for (name, ty, raw) in headers {
        h.push(name.len() as u8);
        h.extend(name.bytes());
        h.push(*ty);
        h.extend(raw);
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut f = Vec::new();
    f.extend((total as u32).to_be_bytes());
    f.extend((h.len() as u32).to_be_bytes());
    let pc = crc(&f);
    f.extend(pc.to_be_bytes());
    f.extend(&h);
    f.extend(payload);
    let mc = crc(&f);
    f.extend(mc.to_be_bytes());
    f
}

fn str_val(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend(s.bytes());
    v
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, |f| out.push(f))?;
    }
    d.finish()?;
    Ok(out)
}

fn bedrock_stream() -> Vec<u8> {
    let mut s = Vec::new();
    let events: [(&str, &str); 4] = [
        ("messageStart", r#"{"p":"abc","role":"assistant"}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello \u00e9 world"},"p":"ab"}"#,
        ),
        ("messageStop", r#"{"p":"abcdef","stopReason":"end_turn"}"#),
        (
            "metadata",
            r#"{"metrics":{"latencyMs":412},"p":"a","usage":{"inputTokens":12,"outputTokens":4,"totalTokens":16}}"#,
        ),
    ];
    for (ty, json) in events {
        s.extend(independent_frame(
            &[
                (":event-type", 7, str_val(ty)),
                (":content-type", 7, str_val("application/json")),
                (":message-type", 7, str_val("event")),
            ],
            json.as_bytes(),
        ));
    }
    s
}

#[test]
fn decodes_aws_sdk_vectors() {
    let text =
        include_str!("../../../../tests/fixtures/providers/bedrock/eventstream_vectors.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 8);
    for vec in vectors {
        let name = vec["name"].as_str().unwrap();
        let bytes = unhex(vec["encoded"].as_str().unwrap());
        let got = decode_all(&[&bytes]);
        if vec["expectation"] == "failure" {
            assert!(got.is_err(), "{name} must be rejected");
            continue;
        }
        let frames = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frames.len(), 1, "{name}");
        let f = &frames[0];
        assert_eq!(f.payload, unhex(vec["payload"].as_str().unwrap()), "{name}");
        let want = vec["headers"].as_object().unwrap();
        assert_eq!(f.headers.len(), want.len(), "{name}");
        for (k, hv) in want {
            let got = &f.headers.iter().find(|(n, _)| n == k).unwrap().1;
            match hv["type"].as_str().unwrap() {
                "integer" => {
                    assert_eq!(*got, HeaderValue::Int(hv["value"].as_i64().unwrap() as i32))
                }
                "string" => {
                    assert_eq!(
                        *got,
                        HeaderValue::String(hv["value"].as_str().unwrap().into())
                    )
                }
                t => panic!("vector type {t} not covered"),
            }
        }
        // The crate's encoder reproduces the published bytes exactly.
        let hdrs: Vec<(&str, HeaderValue)> = f
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        assert_eq!(encode(&hdrs, &f.payload), bytes, "{name} re-encoded");
    }
}

#[test]
fn every_split_of_a_stream_gives_the_same_frames() {
    let stream = bedrock_stream();
    let whole = decode_all(&[&stream]).unwrap();
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[0].header_str(":event-type"), Some("messageStart"));
    assert_eq!(whole[3].header_str(":message-type"), Some("event"));
    assert!(String::from_utf8(whole[1].payload.clone())
        .unwrap()
        .contains("Hello"));
    for i in 0..=stream.len() {
        assert_eq!(
            decode_all(&[&stream[..i], &stream[i..]]).unwrap(),
            whole,
            "split at {i}"
        );
        for j in (i..=stream.len()).step_by(23) {
            let (a, rest) = stream.split_at(i);
            let (b, c) = rest.split_at(j - i);
            assert_eq!(decode_all(&[a, b, c]).unwrap(), whole, "split at {i},{j}");
        }
    }
    // One byte at a time, and nothing held beyond the frame in progress.
    let mut d = Decoder::default();
    let mut n = 0;
    let longest = whole.iter().map(|f| f.payload.len() + 200).max().unwrap();
    for b in &stream {
        d.feed(std::slice::from_ref(b), |_| n += 1).unwrap();
        assert!(d.buffered() <= longest);
    }
    assert_eq!(n, 4);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn all_header_types_round_trip() {
    let uuid: [u8; 16] = *b"0123456789abcdef";
    let frame = independent_frame(
        &[
            ("t", 0, vec![]),
            ("f", 1, vec![]),
            ("b", 2, vec![0xFE]),
            ("s", 3, (-2i16).to_be_bytes().to_vec()),
            ("i", 4, 70000i32.to_be_bytes().to_vec()),
            ("l", 5, (-5i64).to_be_bytes().to_vec()),
            ("y", 6, vec![0, 2, 0xAA, 0xBB]),
            ("z", 7, str_val("h\u{e9}")),
            ("ts", 8, 1_700_000_000_000i64.to_be_bytes().to_vec()),
            ("u", 9, uuid.to_vec()),
        ],
        b"{}",
    );
    let f = decode_all(&[&frame]).unwrap().remove(0);
    let want = vec![
        ("t".to_string(), HeaderValue::Bool(true)),
        ("f".into(), HeaderValue::Bool(false)),
        ("b".into(), HeaderValue::Byte(-2)),
        ("s".into(), HeaderValue::Short(-2)),
        ("i".into(), HeaderValue::Int(70000)),
        ("l".into(), HeaderValue::Long(-5)),
        ("y".into(), HeaderValue::Bytes(vec![0xAA, 0xBB])),
        ("z".into(), HeaderValue::String("h\u{e9}".into())),
        ("ts".into(), HeaderValue::Timestamp(1_700_000_000_000)),
        ("u".into(), HeaderValue::Uuid(uuid)),
    ];
    assert_eq!(f.headers, want);
    let hdrs: Vec<(&str, HeaderValue)> =
        want.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert_eq!(encode(&hdrs, b"{}"), frame);
}

#[test]
fn every_corrupted_byte_is_rejected() {
    let stream = bedrock_stream();
    let first_len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    for i in 0..first_len {
        let mut bad = stream.clone();
        bad[i] ^= 0x01;
        // A flip in the length fields may announce a longer frame, leaving the
        // decoder waiting: finish() then reports truncation. Never a silent success.
        assert!(decode_all(&[&bad]).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn errors_name_what_and_where() {
    let mut stream = bedrock_stream();
    let first_len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    // Corrupt the message CRC of the second frame.
    let second_end = first_len
        + u32::from_be_bytes(stream[first_len..first_len + 4].try_into().unwrap()) as usize;
    stream[second_end - 1] ^= 0xFF;
    let mut d = Decoder::default();
    let mut got = 0;
    let err = d.feed(&stream, |_| got += 1).unwrap_err();
    assert_eq!(got, 1, "the frame before the bad one is still delivered");
    match &err {
        FrameError::MessageCrc { offset, .. } => assert_eq!(*offset, first_len as u64),
        e => panic!("unexpected {e:?}"),
    }
    assert!(err.to_string().contains(&format!("byte {first_len}")));
    assert!(err.to_string().contains("message CRC mismatch"));
    // Poisoned: later input is refused with the same error.
    assert_eq!(d.feed(b"x", |_| got += 1).unwrap_err(), err);

    let mut p = stream.clone();
    p[8] ^= 1;
    assert!(matches!(
        decode_all(&[&p]),
        Err(FrameError::PreludeCrc { offset: 0, .. })
    ));

    let half = &bedrock_stream()[..first_len - 3];
    assert!(matches!(
        decode_all(&[half]),
        Err(FrameError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn oversized_frames_are_refused_from_the_prelude() {
    let big = independent_frame(&[], &vec![b'x'; 5000]);
    let mut d = Decoder::new(4096);
    let err = d.feed(&big[..12], |_| {}).unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { total, max: 4096, .. } if total as usize == big.len())
    );
    assert!(d.buffered() == 0);
    assert!(err.to_string().contains("exceeds the 4096-byte limit"));

    // Lengths that cannot hold a frame are refused too.
    let mut bad = Vec::new();
    bad.extend(8u32.to_be_bytes());
    bad.extend(0u32.to_be_bytes());
    bad.extend(crc32(&bad).to_be_bytes());
    assert!(matches!(
        decode_all(&[&bad]),
        Err(FrameError::BadLength { total: 8, .. })
    ));
    let mut bad = Vec::new();
    bad.extend(20u32.to_be_bytes());
    bad.extend(10u32.to_be_bytes());
    bad.extend(crc32(&bad).to_be_bytes());
    assert!(matches!(
        decode_all(&[&bad]),
        Err(FrameError::BadLength { headers: 10, .. })
    ));
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    for (hdr, reason) in [
        (vec![5u8, b'a'], "header name truncated"),
        (vec![1, b'a', 42], "unknown header value type"),
        (vec![1, b'a', 7, 0, 9, b'x'], "header value truncated"),
        (vec![1, b'a', 4, 0], "header value truncated"),
        (vec![1, 0xFF, 0], "header name is not UTF-8"),
        (vec![0], "empty header name"),
    ] {
        let total = 12 + hdr.len() + 4;
        let mut f = Vec::new();
        f.extend((total as u32).to_be_bytes());
        f.extend((hdr.len() as u32).to_be_bytes());
        f.extend(crc32(&f).to_be_bytes());
        f.extend(&hdr);
        f.extend(crc32(&f).to_be_bytes());
        match decode_all(&[&f]) {
            Err(FrameError::BadHeader { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("{hdr:?}: {other:?}"),
        }
    }
}
