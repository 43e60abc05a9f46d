//! AWS's event-stream framing, as `InvokeWithResponseStream` answers with it, written with
//! `aws-smithy-eventstream` (the SDKs' own implementation): each message is a prelude, typed
//! headers, the payload and CRC32s, which the SDKs check.

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

/// One event: `:event-type`, `:content-type` and `:message-type: event` headers, then `payload`.
fn message(event_type: &'static str, content_type: &'static str, payload: Bytes) -> Bytes {
    let m = Message::new(payload)
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String(content_type.into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ));
    let mut out = Vec::new();
    write_message_to(&m, &mut out).expect("an event with string headers encodes");
    Bytes::from(out)
}

/// A piece of the function's answer.
pub(crate) fn chunk(payload: &[u8]) -> Bytes {
    message(
        "PayloadChunk",
        "application/octet-stream",
        Bytes::copy_from_slice(payload),
    )
}

/// The end of the stream; with an error type and its details when the function failed.
pub(crate) fn complete(error: Option<(&str, &str)>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some((code, details)) => serde_json::json!({"ErrorCode": code, "ErrorDetails": details}),
    };
    message(
        "InvokeComplete",
        "application/json",
        Bytes::from(serde_json::to_vec(&body).expect("json")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    /// Reads a message back as the SDKs do (lengths and both CRCs checked), with a decoder
    /// written apart from the library, on the bytes of AWS's framing.
    fn decode(m: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        let total = be(&m[0..4]) as usize;
        let hlen = be(&m[4..8]) as usize;
        assert_eq!(total, m.len());
        assert_eq!(be(&m[8..12]), crc32(&m[0..8]));
        assert_eq!(be(&m[total - 4..]), crc32(&m[..total - 4]));
        let mut h = &m[12..12 + hlen];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8(h[1..1 + n].to_vec()).unwrap();
            assert_eq!(h[1 + n], 7, "a string header");
            let vlen = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8(h[4 + n..4 + n + vlen].to_vec()).unwrap();
            headers.push((name, value));
            h = &h[4 + n + vlen..];
        }
        (headers, m[12 + hlen..total - 4].to_vec())
    }

    /// CRC-32 (IEEE), bit by bit.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= *b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
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
        let m = complete(Some(("Error", "boom")));
        let (headers, payload) = decode(&m);
        assert_eq!(headers[0].1, "InvokeComplete");
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ErrorCode": "Error", "ErrorDetails": "boom"})
        );
        assert_eq!(decode(&complete(None)).1, b"{}");
        // And the library reads its own framing back.
        let back = read_message_from(&m[..]).unwrap();
        assert_eq!(back.payload().as_ref(), &payload[..]);
    }
}
