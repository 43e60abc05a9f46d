//! AWS's event-stream framing, as `InvokeWithResponseStream` answers with it: each message is a
//! prelude (total length, headers length, CRC32 of both), typed headers, the payload and a CRC32
//! of everything before it. The SDKs check both CRCs.

use bytes::Bytes;

/// One event: `:event-type`, `:content-type` and `:message-type: event` headers, then `payload`.
pub(super) fn message(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", content_type),
        (":message-type", "event"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        // Value type 7: a string with a 16-bit length.
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&m);
    m.extend_from_slice(&prelude_crc.to_be_bytes());
    m.extend_from_slice(&headers);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(m)
}

/// A piece of the function's answer.
pub(super) fn chunk(payload: &[u8]) -> Bytes {
    message("PayloadChunk", "application/octet-stream", payload)
}

/// The end of the stream; with an error type and its details when the function failed.
pub(super) fn complete(error: Option<(&str, &str)>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some((code, details)) => serde_json::json!({"ErrorCode": code, "ErrorDetails": details}),
    };
    message(
        "InvokeComplete",
        "application/json",
        &serde_json::to_vec(&body).expect("json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a message back: (headers, payload), checking lengths and both CRCs.
    fn decode(m: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        let total = be(&m[0..4]) as usize;
        let hlen = be(&m[4..8]) as usize;
        assert_eq!(total, m.len());
        assert_eq!(be(&m[8..12]), crc32fast::hash(&m[0..8]));
        assert_eq!(be(&m[total - 4..]), crc32fast::hash(&m[..total - 4]));
        let mut h = &m[12..12 + hlen];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8(h[1..1 + n].to_vec()).unwrap();
            assert_eq!(h[1 + n], 7);
            let vlen = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8(h[4 + n..4 + n + vlen].to_vec()).unwrap();
            headers.push((name, value));
            h = &h[4 + n + vlen..];
        }
        (headers, m[12 + hlen..total - 4].to_vec())
    }

    #[test]
    fn messages_frame_and_checksum_as_the_sdks_read_them() {
        let (headers, payload) = decode(&chunk(b"hello"));
        assert_eq!(payload, b"hello");
        assert_eq!(
            headers,
            vec![
                (":event-type".into(), "PayloadChunk".into()),
                (":content-type".into(), "application/octet-stream".into()),
                (":message-type".into(), "event".into()),
            ]
        );
        let (headers, payload) = decode(&complete(Some(("Error", "boom"))));
        assert_eq!(headers[0].1, "InvokeComplete");
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ErrorCode": "Error", "ErrorDetails": "boom"})
        );
        assert_eq!(decode(&complete(None)).1, b"{}");
    }
}
