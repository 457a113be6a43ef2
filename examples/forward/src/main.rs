//! `forward`: a handler that POSTs each record to a URL given on its command line.
//!
//! The endpoint's answer decides what the engine does: 2xx is success; 5xx, 429, 408 and
//! timeouts are temporary (the engine retries, honouring `Retry-After`); other 4xx are
//! permanent (the call becomes a dead letter). The call id travels as `Idempotency-Key`, so
//! the endpoint can drop the duplicates that at-least-once delivery may bring.
//!
//! ```text
//! cargo run -p forward -- --to http://127.0.0.1:9000/ingest --listen 127.0.0.1:9100
//! cargo run -p engine -- dev --target http://127.0.0.1:9100/forward
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sdk::protocol::{classify_status, parse_retry_after, OutcomeClass};
use sdk::{Context, Endpoint, Error};

#[derive(Debug, Parser)]
#[command(version, about = "Forward each record to an HTTP endpoint")]
struct Args {
    /// Where to POST each record.
    #[arg(long)]
    to: reqwest::Url,
    /// Address to serve the `forward` function on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Time limit of one forward.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone)]
struct Forwarder {
    client: reqwest::Client,
    to: reqwest::Url,
}

impl Forwarder {
    async fn forward(&self, ctx: Context, body: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut request = self
            .client
            .post(self.to.clone())
            .header("idempotency-key", &ctx.call_id)
            .body(body);
        if let Some(key) = ctx.key() {
            request = request.header("x-record-key", sdk::protocol::encode_bytes(key));
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                Error::temporary(format!("{} timed out", self.to))
            } else {
                Error::temporary(format!("cannot reach {}: {e}", self.to))
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = response
            .bytes()
            .await
            .map_err(|e| Error::temporary(format!("reading the answer: {e}")))?;
        match classify_status(status) {
            OutcomeClass::Success => Ok(text.to_vec()),
            OutcomeClass::Temporary => {
                let error = Error::temporary(format!("{} answered {status}", self.to));
                Err(match retry_after {
                    Some(delay) => error.retry_after(delay),
                    None => error,
                })
            }
            OutcomeClass::Permanent => Err(Error::permanent(format!(
                "{} answered {status}: {}",
                self.to,
                String::from_utf8_lossy(&text).trim()
            ))),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let forwarder = Forwarder {
        client: reqwest::Client::builder().timeout(args.timeout).build()?,
        to: args.to.clone(),
    };
    eprintln!("forward: serving http://{}/forward -> {}", args.listen, args.to);
    Endpoint::new()
        .raw("forward", move |ctx, body| {
            let forwarder = forwarder.clone();
            async move { forwarder.forward(ctx, body.to_vec()).await }
        })
        .verify_from_env()?
        .serve(args.listen)
        .await?;
    Ok(())
}
