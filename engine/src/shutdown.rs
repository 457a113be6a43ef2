//! Graceful shutdown: one [`ShutdownTrigger`] tells every [`Shutdown`] listener at once.
//!
//! A listener is cheap to clone; each task that must stop takes one and awaits
//! [`Shutdown::recv`] beside its work. Dropping the trigger counts as a shutdown too, so a
//! task never outlives the engine that started it.

use tokio::sync::watch;

/// Starts the shutdown of every listener made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Tells a task that the engine is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and its first listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tell every listener to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Self::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Another listener.
    pub fn listener(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Wait until shutdown begins (at once if it already has).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_one_trigger_even_when_made_late() {
        let (trigger, mut first) = channel();
        let mut second = first.clone();
        assert!(!first.is_triggered());
        trigger.trigger();
        first.recv().await;
        second.recv().await;
        let mut late = trigger.listener();
        late.recv().await;
        assert!(late.is_triggered());
    }

    #[tokio::test]
    async fn a_dropped_trigger_stops_listeners() {
        let (trigger, mut listener) = channel();
        drop(trigger);
        listener.recv().await;
        assert!(listener.is_triggered());
    }
}
