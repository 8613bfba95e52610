//! The recipient state machine (sans-I/O).
//!
//! | from            | event                        | to                                   | written to disk        |
//! |-----------------|------------------------------|--------------------------------------|------------------------|
//! | (none)          | `commit`                     | Pending { attempts 0, next = arrival } | MESSAGE record        |
//! | Pending         | `due()` hands it out (lease) | Pending, leased                      | nothing (memory only)  |
//! | Pending, leased | `release`                    | Pending                              | nothing                |
//! | Pending, leased | restart                      | Pending (lease forgotten)            | nothing                |
//! | Pending, leased | `hold` (ETRN/ATRN domain)    | Pending, held (not due)              | nothing (memory only)  |
//! | Pending, held   | `take_matching` / `unhold`   | Pending, leased / Pending            | nothing                |
//! | Pending, held   | restart                      | Pending (hold forgotten)             | nothing                |
//! | Pending (leased or not) | `Deferred { next }`  | Pending { attempts+1, next }         | OUTCOME record         |
//! | Pending (leased or not) | `Delivered`          | Done { attempts+1 }                  | OUTCOME record         |
//! | Pending (leased or not) | `Failed`             | Failed { attempts+1 }                | OUTCOME record         |
//! | Done / Failed   | any outcome                  | unchanged, error `AlreadyFinal`      | nothing                |
//! | all recipients Done/Failed | (automatic)       | message dead: leaves the index, spill file deleted, its segment may go | nothing more |
//!
//! Delivery is at-least-once: an outcome is durable only when
//! `record_outcomes` returns, so a crash between a delivery and its outcome
//! record delivers that recipient again after restart (qmail says the same
//! of itself). A finished recipient is never delivered again.

/// Longest reply text kept per recipient; longer replies are cut (the
/// OUTCOME record stores what is kept).
pub(crate) const MAX_REPLY: usize = 4096;

/// Cuts a reply to [`MAX_REPLY`] bytes on a character boundary.
pub(crate) fn cut_reply(s: &str) -> &str {
    if s.len() <= MAX_REPLY {
        return s;
    }
    let mut end = MAX_REPLY;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecipientState {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Delivered; final.
    Done,
    /// Failed permanently (the caller bounces); final.
    Failed,
}

impl RecipientState {
    pub(crate) fn code(self) -> u8 {
        match self {
            RecipientState::Pending => 0,
            RecipientState::Done => 1,
            RecipientState::Failed => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<RecipientState> {
        match c {
            0 => Some(RecipientState::Pending),
            1 => Some(RecipientState::Done),
            2 => Some(RecipientState::Failed),
            _ => None,
        }
    }

    /// Done or Failed.
    pub fn is_final(self) -> bool {
        self != RecipientState::Pending
    }
}

/// State of one recipient as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// Pending, Done or Failed.
    pub state: RecipientState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix time of the next attempt (meaningful while Pending).
    pub next_attempt: u64,
    /// Text of the last reply from the delivery agent (cut to 4096 bytes).
    pub last_reply: String,
}

impl RecipientStatus {
    /// A fresh recipient, due at `next_attempt`.
    pub fn new(next_attempt: u64) -> RecipientStatus {
        RecipientStatus {
            state: RecipientState::Pending,
            attempts: 0,
            next_attempt,
            last_reply: String::new(),
        }
    }
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// Accepted by the next hop or the mailbox.
    Delivered {
        /// Reply text (e.g. the remote `250 ...`).
        reply: String,
    },
    /// Temporary failure: try again at `next_attempt` (unix seconds).
    Deferred {
        /// Reply text (e.g. `451 ...`).
        reply: String,
        /// When to try again.
        next_attempt: u64,
    },
    /// Permanent failure. The caller commits the bounce message *before*
    /// recording this, so a crash in between bounces twice rather than never.
    Failed {
        /// Reply text (e.g. `550 ...`).
        reply: String,
    },
}

/// A transition the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The recipient is Done or Failed already.
    #[error("recipient is already final ({0:?})")]
    AlreadyFinal(RecipientState),
}

impl RecipientStatus {
    /// Applies an outcome, returning the new status (the table above).
    pub fn apply(&self, outcome: &RecipientOutcome) -> Result<RecipientStatus, TransitionError> {
        if self.state.is_final() {
            return Err(TransitionError::AlreadyFinal(self.state));
        }
        let attempts = self.attempts.saturating_add(1);
        Ok(match outcome {
            RecipientOutcome::Delivered { reply } => RecipientStatus {
                state: RecipientState::Done,
                attempts,
                next_attempt: self.next_attempt,
                last_reply: cut_reply(reply).to_string(),
            },
            RecipientOutcome::Failed { reply } => RecipientStatus {
                state: RecipientState::Failed,
                attempts,
                next_attempt: self.next_attempt,
                last_reply: cut_reply(reply).to_string(),
            },
            RecipientOutcome::Deferred {
                reply,
                next_attempt,
            } => RecipientStatus {
                state: RecipientState::Pending,
                attempts,
                next_attempt: *next_attempt,
                last_reply: cut_reply(reply).to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered() -> RecipientOutcome {
        RecipientOutcome::Delivered {
            reply: "250 ok".into(),
        }
    }
    fn failed() -> RecipientOutcome {
        RecipientOutcome::Failed {
            reply: "550 no".into(),
        }
    }
    fn deferred(t: u64) -> RecipientOutcome {
        RecipientOutcome::Deferred {
            reply: "451 later".into(),
            next_attempt: t,
        }
    }

    #[test]
    fn pending_deferred_stays_pending_with_attempt() {
        let s = RecipientStatus::new(10).apply(&deferred(500)).unwrap();
        assert_eq!(s.state, RecipientState::Pending);
        assert_eq!(s.attempts, 1);
        assert_eq!(s.next_attempt, 500);
        assert_eq!(s.last_reply, "451 later");
        let s = s.apply(&deferred(900)).unwrap();
        assert_eq!((s.attempts, s.next_attempt), (2, 900));
    }

    #[test]
    fn pending_delivered_is_done() {
        let s = RecipientStatus::new(10).apply(&delivered()).unwrap();
        assert_eq!(s.state, RecipientState::Done);
        assert_eq!(s.attempts, 1);
    }

    #[test]
    fn pending_failed_is_failed() {
        let s = RecipientStatus::new(10).apply(&failed()).unwrap();
        assert_eq!(s.state, RecipientState::Failed);
        assert_eq!(s.last_reply, "550 no");
    }

    #[test]
    fn final_states_reject_everything() {
        for fin in [delivered(), failed()] {
            let s = RecipientStatus::new(0).apply(&fin).unwrap();
            for o in [delivered(), failed(), deferred(1)] {
                assert_eq!(s.apply(&o), Err(TransitionError::AlreadyFinal(s.state)));
            }
        }
    }

    #[test]
    fn long_reply_is_cut_on_char_boundary() {
        let reply = "é".repeat(5000);
        let s = RecipientStatus::new(0)
            .apply(&RecipientOutcome::Failed { reply })
            .unwrap();
        assert!(s.last_reply.len() <= 4096);
        assert!(s.last_reply.chars().all(|c| c == 'é'));
    }

    #[test]
    fn codes_round_trip() {
        for s in [
            RecipientState::Pending,
            RecipientState::Done,
            RecipientState::Failed,
        ] {
            assert_eq!(RecipientState::from_code(s.code()), Some(s));
        }
        assert_eq!(RecipientState::from_code(3), None);
    }
}
