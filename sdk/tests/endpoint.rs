//! The SDK's endpoint over real HTTP on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use sdk::protocol::{classify_status, header, OutcomeClass};
use sdk::signing::{KeyPair, Signer, Verifier};
use sdk::{Context, Endpoint, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    amount: i64,
}

#[derive(Debug, Serialize)]
struct Receipt {
    id: u64,
    call: String,
    attempt: u32,
    key: Option<String>,
}

async fn charge(ctx: Context, order: Order) -> Result<Receipt, Error> {
    match order.amount {
        a if a < 0 => Err(Error::permanent("negative amount")),
        0 => Err(Error::temporary("bank busy").retry_after(Duration::from_millis(1500))),
        13 => panic!("unlucky order"),
        99 => Err(Error::overloaded("pool exhausted").retry_after(Duration::from_secs(3))),
        _ => Ok(Receipt {
            id: order.id,
            call: ctx.call_id.clone(),
            attempt: ctx.attempt,
            key: ctx.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        }),
    }
}

async fn echo(_ctx: Context, body: Bytes) -> Result<Vec<u8>, Error> {
    Ok(body.to_vec())
}

async fn serve(endpoint: Endpoint) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(endpoint.serve_on(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn endpoint() -> Endpoint {
    Endpoint::new().function("charge", charge).raw("echo", echo)
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header(header::CALL_ID, "call-1")
        .header(header::ATTEMPT, "3")
        .header(header::KAFKA_TOPIC, "orders")
        .header(header::KAFKA_KEY, "user%2042")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn typed_input_decodes_and_the_context_is_filled() {
    let (addr, _stop) = serve(endpoint()).await;
    let response = post(addr, "/charge", r#"{"id": 7, "amount": 100}"#).await;
    assert_eq!(response.status(), 200);
    let receipt: serde_json::Value = response.json().await.unwrap();
    assert_eq!(receipt["id"], 7);
    assert_eq!(receipt["call"], "call-1");
    assert_eq!(receipt["attempt"], 3);
    assert_eq!(receipt["key"], "user 42");
}

#[tokio::test]
async fn undecodable_input_is_permanent() {
    let (addr, _stop) = serve(endpoint()).await;
    let response = post(addr, "/charge", "not json").await;
    assert_eq!(response.status(), 400);
    assert_eq!(classify_status(response.status().as_u16()), OutcomeClass::Permanent);
    assert!(response.text().await.unwrap().contains("cannot decode"));
}

#[tokio::test]
async fn temporary_and_permanent_errors_map_to_their_classes() {
    let (addr, _stop) = serve(endpoint()).await;
    let temporary = post(addr, "/charge", r#"{"id": 1, "amount": 0}"#).await;
    assert_eq!(temporary.status(), 500, "an application error is not a 503");
    assert_eq!(classify_status(temporary.status().as_u16()), OutcomeClass::Temporary);
    assert_eq!(temporary.headers()["retry-after"], "2", "1.5 s rounds up");
    assert_eq!(temporary.headers()[header::FAILURE], "application");
    assert_eq!(
        temporary.headers()[header::PROTOCOL],
        sdk::protocol::PROTOCOL_VERSION.to_string()
    );
    let overloaded = post(addr, "/charge", r#"{"id": 1, "amount": 99}"#).await;
    assert_eq!(overloaded.status(), 503);
    assert_eq!(overloaded.headers()[header::FAILURE], "overload");
    assert_eq!(overloaded.headers()["retry-after"], "3");
    let permanent = post(addr, "/charge", r#"{"id": 1, "amount": -5}"#).await;
    assert_eq!(classify_status(permanent.status().as_u16()), OutcomeClass::Permanent);
    assert!(permanent.headers().get(header::FAILURE).is_none());
    assert!(permanent.text().await.unwrap().contains("negative amount"));
}

#[tokio::test]
async fn a_panic_is_temporary_and_the_server_survives() {
    let (addr, _stop) = serve(endpoint()).await;
    let response = post(addr, "/charge", r#"{"id": 1, "amount": 13}"#).await;
    assert_eq!(response.status(), 500);
    assert_eq!(classify_status(500), OutcomeClass::Temporary);
    assert_eq!(response.headers()[header::FAILURE], "application");
    assert!(response.text().await.unwrap().contains("unlucky order"));
    let after = post(addr, "/charge", r#"{"id": 2, "amount": 1}"#).await;
    assert_eq!(after.status(), 200, "the server still serves after a panic");
}

#[tokio::test]
async fn unknown_function_is_404_and_health_answers() {
    let (addr, _stop) = serve(endpoint()).await;
    let response = post(addr, "/refund", "{}").await;
    assert_eq!(response.status(), 404);
    assert_eq!(classify_status(404), OutcomeClass::Permanent);
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let echo = post(addr, "/echo", "raw bytes").await;
    assert_eq!(echo.text().await.unwrap(), "raw bytes");
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn signed_post(addr: SocketAddr, signer: Option<&Signer>, body: &str, created: u64) -> u16 {
    let call_id = "0190a0e4-0000-7000-8000-000000000001";
    let fields = vec![
        ("engine-call-id", call_id.to_string()),
        ("engine-attempt", "1".to_string()),
        ("idempotency-key", call_id.to_string()),
    ];
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/echo"))
        .body(body.to_string());
    for (name, value) in &fields {
        request = request.header(*name, value);
    }
    if let Some(signer) = signer {
        for (name, value) in signer.sign("POST", "/echo", body.as_bytes(), &fields, created).unwrap() {
            request = request.header(name, value);
        }
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn signatures_are_required_when_a_key_is_configured() {
    let keys = KeyPair::generate();
    let signer = Signer::from_base64("engine", &keys.private_base64()).unwrap();
    let verifier = Verifier::from_base64(&keys.public_base64()).unwrap();
    let (addr, _stop) = serve(endpoint().verify_with(verifier)).await;

    assert_eq!(
        signed_post(addr, Some(&signer), "hello", now()).await,
        200,
        "a valid signature is accepted"
    );
    assert_eq!(
        signed_post(addr, None, "hello", now()).await,
        401,
        "a missing signature is refused"
    );
    assert_eq!(
        signed_post(addr, Some(&signer), "hello", now() - 3600).await,
        401,
        "a stale one too"
    );
    let other = KeyPair::generate();
    let impostor = Signer::from_base64("engine", &other.private_base64()).unwrap();
    assert_eq!(
        signed_post(addr, Some(&impostor), "hello", now()).await,
        401,
        "and one by another key"
    );
    assert_eq!(classify_status(401), OutcomeClass::Permanent);
}
