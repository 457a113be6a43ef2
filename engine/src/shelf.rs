//! Journals too large to travel inside a request (over [`INLINE_JOURNAL_BYTES`]). The
//! attempt puts its journal here and sends only a link, `engine-journal-url`; the SDK
//! fetches it from the admin API (`GET /v1/journals/{token}`, no admin token: the random
//! token in the path is the permission). The journal leaves the shelf when the attempt ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Journals larger than this are fetched by the SDK instead of sent inline.
pub const INLINE_JOURNAL_BYTES: usize = 4 * 1024 * 1024;

/// The journals of attempts in flight, by token.
#[derive(Debug, Clone, Default)]
pub struct JournalShelf {
    journals: Arc<Mutex<HashMap<String, Bytes>>>,
    /// How often a journal was fetched (for `/metrics`).
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

/// A journal on the shelf for as long as this lives.
#[derive(Debug)]
pub struct Lease {
    shelf: JournalShelf,
    pub token: String,
}

impl JournalShelf {
    /// Keep `journal` until the lease is dropped; the lease's token fetches it.
    pub fn put(&self, journal: Bytes) -> Lease {
        let token = format!("{:032x}", rand::Rng::random::<u128>(&mut rand::rng()));
        self.lock().insert(token.clone(), journal);
        Lease {
            shelf: self.clone(),
            token,
        }
    }

    /// The journal of `token`, while its attempt lasts.
    pub fn get(&self, token: &str) -> Option<Bytes> {
        let journal = self.lock().get(token).cloned();
        if journal.is_some() {
            self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        journal
    }

    /// Journals fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.journals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shelf.lock().remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_is_fetched_while_its_lease_lives_and_gone_after() {
        let shelf = JournalShelf::default();
        let lease = shelf.put(Bytes::from_static(b"[1]"));
        assert_eq!(shelf.get(&lease.token).as_deref(), Some(&b"[1]"[..]));
        assert_eq!(
            shelf.get(&lease.token).as_deref(),
            Some(&b"[1]"[..]),
            "a retried fetch works"
        );
        assert_eq!(shelf.get("other"), None);
        let token = lease.token.clone();
        drop(lease);
        assert_eq!(shelf.get(&token), None);
        assert_eq!(shelf.fetched(), 2);
    }
}
