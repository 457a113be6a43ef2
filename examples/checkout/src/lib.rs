//! `checkout`: a durable workflow, from a Kafka order record to a confirmation on a topic.
//!
//! 1. **charge** (a journaled step): the payment gateway is busy 20% of the time (a
//!    temporary error: the engine retries the workflow, and the charge runs again until it
//!    succeeds once; a stored charge never runs again);
//! 2. **sleep** through a cooling-off period (durable: an engine restart does not reset it);
//! 3. **reserve** each line item as a child call of the `reserve-line` subscription, all at
//!    once, and gather the results in line order (one suspension however many lines); a
//!    line whose SKU is out of stock fails for good and is refunded;
//! 4. **wait for the `shipped` signal** at most `shipping_timeout`
//!    (`engine calls signal <call id> shipped '{"carrier": "ups"}'`);
//! 5. **produce** a confirmation to the confirmations topic, exactly once.
//!
//! The crate is a library (so that `engine dev --example checkout` serves it in process) and
//! a binary that serves it alone; see `src/main.rs`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sdk::{Context, Endpoint, Error, Workflow};
use serde::{Deserialize, Serialize};

/// The subscription that runs one line's reservation (a child call per line).
pub const RESERVE_LINE: &str = "reserve-line";

/// What the example does, and how long it waits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Kafka topic confirmations are produced to.
    pub confirmations_topic: String,
    /// The durable sleep between charging and reserving.
    pub cooling_off: Duration,
    /// How long to wait for the `shipped` signal.
    pub shipping_timeout: Duration,
    /// Share of charge attempts the gateway answers "busy" (a temporary error).
    pub gateway_busy_rate: f64,
    /// Print what happens, for a person watching `engine dev`.
    pub narrate: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            confirmations_topic: "confirmations".into(),
            cooling_off: Duration::from_secs(2),
            shipping_timeout: Duration::from_secs(60),
            gateway_busy_rate: 0.2,
            narrate: true,
        }
    }
}

/// An order, as it arrives on the orders topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub customer: String,
    pub lines: Vec<Line>,
}

/// One line item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    /// Price of one, in cents.
    pub price_cents: i64,
}

/// A line's reservation, the output of a `reserve-line` child call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    pub sku: String,
    pub quantity: u32,
    pub warehouse: String,
}

/// The `shipped` signal's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shipment {
    pub carrier: String,
}

/// The workflow's output, also produced to the confirmations topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirmation {
    pub order: String,
    pub charge_id: String,
    pub charged_cents: i64,
    pub refunded_cents: i64,
    pub reserved: Vec<Reservation>,
    /// Lines that could not be reserved, with the reason.
    pub unavailable: Vec<String>,
    /// The carrier, or `None` if the shipping signal did not come in time.
    pub carrier: Option<String>,
}

/// This build's deployment: workflows started on it finish on it (see docs/workflows.md).
pub const DEPLOYMENT: &str = concat!("checkout-", env!("CARGO_PKG_VERSION"));

/// The endpoint: workflow `checkout` and function `reserve-line`.
pub fn endpoint(settings: Settings) -> Endpoint {
    let settings = Arc::new(settings);
    let for_reserve = Arc::clone(&settings);
    Endpoint::new()
        .deployment(DEPLOYMENT)
        .workflow("checkout", move |wf, order| checkout(Arc::clone(&settings), wf, order))
        .function(RESERVE_LINE, move |ctx, line| {
            reserve_line(Arc::clone(&for_reserve), ctx, line)
        })
}

async fn checkout(settings: Arc<Settings>, wf: Workflow, order: Order) -> Result<Confirmation, Error> {
    if order.lines.is_empty() {
        return Err(Error::permanent(format!("order {}: no lines", order.id)));
    }
    let total: i64 = order.lines.iter().map(|l| l.price_cents * i64::from(l.quantity)).sum();
    // Every request replays the workflow from the start: narrate only what is new.
    let say = |text: String| {
        if settings.narrate && !wf.is_replaying() {
            println!("checkout: order {}: {text}", order.id);
        }
    };

    // Taken from the workflow, so a replay gets the same id: the gateway's idempotency key.
    let charge_id = wf.uuid();
    let busy_rate = settings.gateway_busy_rate;
    let charged = wf
        .step("charge", {
            let charge_id = charge_id.clone();
            move || async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let busy = rand::rng().random::<f64>() < busy_rate;
                if busy {
                    return Err(Error::temporary("payment gateway busy"));
                }
                Ok(charge_id)
            }
        })
        .await?;
    say(format!(
        "charged {total} cents ({charged}); cooling off for {:?}",
        settings.cooling_off
    ));

    wf.sleep(settings.cooling_off).await;

    let reservations = wf.join_all(
        order
            .lines
            .iter()
            .map(|line| wf.call::<_, Reservation>(RESERVE_LINE, line))
            .collect(),
    );
    let mut reserved = Vec::new();
    let mut unavailable = Vec::new();
    let mut refund = 0;
    for (line, outcome) in order.lines.iter().zip(reservations.await) {
        match outcome {
            Ok(reservation) => reserved.push(reservation),
            Err(error) => {
                refund += line.price_cents * i64::from(line.quantity);
                unavailable.push(format!("{}: {}", line.sku, error.message()));
            }
        }
    }
    if refund > 0 {
        wf.step("refund", move || async move { Ok(refund) }).await?;
    }
    say(format!(
        "{} line(s) reserved, {} unavailable; waiting up to {:?} for signal `shipped` (engine calls signal {} shipped '{{\"carrier\": \"ups\"}}')",
        reserved.len(),
        unavailable.len(),
        settings.shipping_timeout,
        wf.context().call_id
    ));

    let shipment: Option<Shipment> = wf.signal_within("shipped", settings.shipping_timeout).await?;
    let confirmation = Confirmation {
        order: order.id.clone(),
        charge_id: charged,
        charged_cents: total,
        refunded_cents: refund,
        reserved,
        unavailable,
        carrier: shipment.map(|s| s.carrier),
    };
    say(match &confirmation.carrier {
        Some(carrier) => format!("shipped with {carrier}; producing the confirmation"),
        None => "no shipping signal in time; producing the confirmation without a carrier".into(),
    });
    wf.produce(&settings.confirmations_topic, Some(&order.id), &confirmation);
    Ok(confirmation)
}

/// Reserve one line in a warehouse. A SKU starting with `gone` is out of stock for good.
async fn reserve_line(settings: Arc<Settings>, ctx: Context, line: Line) -> Result<Reservation, Error> {
    if line.quantity == 0 {
        return Err(Error::permanent(format!("{}: quantity must be positive", line.sku)));
    }
    if line.sku.starts_with("gone") {
        return Err(Error::permanent("out of stock"));
    }
    let work = Duration::from_millis(rand::rng().random_range(1..20));
    tokio::time::sleep(work).await;
    let warehouse = if ctx.call_id.as_bytes().last().is_some_and(|b| b % 2 == 0) {
        "north"
    } else {
        "south"
    };
    if settings.narrate {
        println!("reserve-line: {} x{} in {warehouse}", line.sku, line.quantity);
    }
    Ok(Reservation {
        sku: line.sku,
        quantity: line.quantity,
        warehouse: warehouse.into(),
    })
}
