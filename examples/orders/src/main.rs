//! `orders`: a typed JSON handler. Each record is an order to charge.
//!
//! - a malformed order (bad JSON, a non-positive amount) is a permanent error: retrying
//!   cannot fix it, so the call becomes a dead letter with the reason;
//! - the "payment gateway" is busy 20% of the time: a temporary error, retried later;
//! - the call id is the idempotency key: an order charged once is never charged again, even
//!   when the engine delivers the call a second time.
//!
//! ```text
//! cargo run -p orders                                     # serves http://127.0.0.1:9200/charge
//! cargo run -p engine -- dev --target http://127.0.0.1:9200/charge
//! {"id": 1, "customer": "ada", "amount_cents": 1250}      # typed into engine dev
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sdk::{Context, Endpoint, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    amount_cents: i64,
}

#[derive(Debug, Clone, Serialize)]
struct Receipt {
    order: u64,
    customer: String,
    charged_cents: i64,
    /// The idempotency key the charge was made under.
    charge_id: String,
}

/// Charges already made, by idempotency key. A real service keeps this in its database.
type Ledger = Arc<Mutex<HashMap<String, Receipt>>>;

async fn charge(ledger: Ledger, ctx: Context, order: Order) -> Result<Receipt, Error> {
    if order.amount_cents <= 0 {
        return Err(Error::permanent(format!("order {}: amount must be positive", order.id)));
    }
    if let Some(receipt) = ledger.lock().expect("ledger").get(&ctx.call_id) {
        println!(
            "order {}: already charged under {} (attempt {}), same receipt",
            order.id, ctx.call_id, ctx.attempt
        );
        return Ok(receipt.clone());
    }
    // The call to the payment gateway.
    tokio::time::sleep(Duration::from_millis(5)).await;
    if rand::rng().random::<f64>() < 0.2 {
        println!(
            "order {}: gateway busy (attempt {}), retry later",
            order.id, ctx.attempt
        );
        return Err(Error::temporary("payment gateway busy").retry_after(Duration::from_secs(1)));
    }
    let receipt = Receipt {
        order: order.id,
        customer: order.customer,
        charged_cents: order.amount_cents,
        charge_id: ctx.call_id.clone(),
    };
    ledger
        .lock()
        .expect("ledger")
        .insert(ctx.call_id.clone(), receipt.clone());
    println!(
        "order {}: charged {} cents (attempt {})",
        order.id, order.amount_cents, ctx.attempt
    );
    Ok(receipt)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let ledger = Ledger::default();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9200".into())
        .parse()?;
    println!("orders: serving http://{addr}/charge");
    Endpoint::new()
        .function("charge", move |ctx, order| charge(Arc::clone(&ledger), ctx, order))
        .verify_from_env()?
        .serve(addr)
        .await?;
    Ok(())
}
