//! The demo handler of `engine dev`: prints each call, fails a share of attempts with 503
//! and rejects values starting with "fail" for good.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use sdk::protocol::{decode_bytes, header};

#[derive(Debug)]
struct Demo {
    failure_rate: f64,
    handled: AtomicU64,
}

pub async fn start_demo_handler(failure_rate: f64) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Demo {
        failure_rate,
        handled: AtomicU64::new(0),
    });
    let app = axum::Router::new().fallback(demo_handle).with_state(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    Ok((addr, task))
}

async fn demo_handle(State(demo): State<Arc<Demo>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let key = headers
        .get(header::KAFKA_KEY)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || "(none)".to_string(),
            |k| String::from_utf8_lossy(&decode_bytes(k)).into_owned(),
        );
    let value = String::from_utf8_lossy(&body);
    let what = format!(
        "call {} attempt {} key {key} value {value:?}",
        text(header::CALL_ID),
        text(header::ATTEMPT)
    );
    if value.starts_with("fail") {
        println!("handler: REJECT {what} -> 400, the call goes dead");
        return (
            StatusCode::BAD_REQUEST,
            "values starting with \"fail\" are rejected".into(),
        );
    }
    if rand::rng().random::<f64>() < demo.failure_rate {
        println!("handler: FAIL   {what} -> 503, the engine will retry");
        return (StatusCode::SERVICE_UNAVAILABLE, "injected failure".into());
    }
    let n = demo.handled.fetch_add(1, Relaxed) + 1;
    println!("handler: OK     {what} (#{n})");
    (StatusCode::OK, format!("handled #{n}"))
}
