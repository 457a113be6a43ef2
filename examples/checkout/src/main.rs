//! Serve the checkout workflow alone (see the library's docs for what it does).
//!
//! ```text
//! cargo run -p checkout -- 127.0.0.1:9300
//! ```
//!
//! The engine needs two subscriptions toward it: `checkout` (its Kafka topic carries the
//! orders; `[subscription.kafka]` also lets the workflow produce confirmations) with target
//! `http://127.0.0.1:9300/checkout`, and `reserve-line` (no topic: its calls are the
//! workflow's children) with target `http://127.0.0.1:9300/reserve-line`. `engine dev
//! --example checkout` sets all of this up in one process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9300".into())
        .parse()?;
    println!("checkout: serving http://{addr}/checkout and http://{addr}/reserve-line");
    checkout::endpoint(checkout::Settings::default())
        .verify_from_env()?
        .serve(addr)
        .await?;
    Ok(())
}
