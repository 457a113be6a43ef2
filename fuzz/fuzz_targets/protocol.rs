//! The wire encodings of the protocol: percent-encoded bytes, record headers, Retry-After.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sdk::protocol::{decode_bytes, decode_record_headers, encode_bytes, encode_record_headers, parse_retry_after};

fuzz_target!(|data: &[u8]| {
    // Any bytes survive an encode/decode round trip.
    assert_eq!(decode_bytes(&encode_bytes(data)), data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Decoding never panics, whatever a peer sends.
    let _ = decode_bytes(text);
    let headers = decode_record_headers(text);
    // What decodes re-encodes to something that decodes the same.
    assert_eq!(decode_record_headers(&encode_record_headers(&headers)), headers);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = parse_retry_after(text, now);
});
