//! The store's health: a failing write path stops delivery until a probe
//! (or any flush) succeeds again.

use crate::error::QueueError;

use super::{now_secs, Queue, State, StoreFailure, STORE_BACKOFF_MAX, STORE_BACKOFF_MIN};

/// Notes a failed write or flush in the store's health.
pub(super) fn note_failure(st: &mut State, msg: String) {
    let now = now_secs();
    match &mut st.failure {
        Some(f) => {
            f.errors += 1;
            f.last_error = msg;
        }
        None => {
            st.failure = Some(StoreFailure {
                since: now,
                errors: 1,
                last_error: msg,
                retry_at: now + STORE_BACKOFF_MIN,
                backoff: STORE_BACKOFF_MIN,
            })
        }
    }
}

impl Queue {
    /// Whether (and since when, how often) the write path is failing.
    pub fn store_failure(&self) -> Option<StoreFailure> {
        self.sh.st.borrow().failure.clone()
    }

    /// The failure episode that ended since the last call, if any: a
    /// successful flush ends it, whether of a probe or of a commit.
    pub fn take_healed(&self) -> Option<StoreFailure> {
        self.sh.st.borrow_mut().healed.take()
    }

    /// Tries the write path of a failing store: starts a fresh segment and
    /// flushes it. Success ends the failure episode (delivery resumes);
    /// failure doubles the pause before the next probe (up to
    /// [`STORE_BACKOFF_MAX`]). Does nothing on a healthy store.
    pub async fn probe(&self) -> Result<(), QueueError> {
        if self.sh.st.borrow().failure.is_none() {
            return Ok(());
        }
        self.sh.st.borrow_mut().force_roll = true;
        let res = async {
            let resv = self.reserve(0).await?;
            drop(resv);
            self.wait_durable().await
        }
        .await;
        if let Err(e) = &res {
            let mut st = self.sh.st.borrow_mut();
            let now = now_secs();
            if st.failure.is_none() {
                note_failure(&mut st, e.to_string());
            }
            if let Some(f) = &mut st.failure {
                f.backoff = (f.backoff * 2).clamp(STORE_BACKOFF_MIN, STORE_BACKOFF_MAX);
                f.retry_at = now + f.backoff;
                f.last_error = e.to_string();
            }
        }
        res
    }
}
