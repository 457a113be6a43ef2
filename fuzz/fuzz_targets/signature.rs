//! Signature verification of requests with hostile headers: never panics, never accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdk::signing::{header, KeyPair, Verifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(4, '\n');
    let (digest, input, signature, body) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let headers: Vec<(&'static str, String)> = vec![
        (header::CONTENT_DIGEST, digest.to_string()),
        (header::SIGNATURE_INPUT, input.to_string()),
        (header::SIGNATURE, signature.to_string()),
        ("engine-call-id", "0190a0e4-0000-7000-8000-000000000001".to_string()),
        ("engine-attempt", "1".to_string()),
        ("idempotency-key", "0190a0e4-0000-7000-8000-000000000001".to_string()),
    ];
    let keys = KeyPair::generate();
    let verifier = Verifier::from_base64(&keys.public_base64()).expect("own key");
    let verdict = verifier.verify("POST", "/hook", body.as_bytes(), headers.as_slice(), 1_800_000_000);
    assert!(verdict.is_err(), "a forged signature was accepted");
});
