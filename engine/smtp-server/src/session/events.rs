//! The parts of the protocol core's events the driver keeps past the input buffer.

use smtp_proto::{AuthSecret, Event};

/// The parts of an [`Event`] the driver needs after the input buffer is
/// released (events borrow the input).
pub(super) enum OwnedEvent {
    Mail {
        sender: String,
    },
    Auth {
        mechanism: String,
        authcid: String,
        secret: AuthSecret,
    },
    ScramLookup {
        authcid: String,
    },
    Rcpt {
        domain: Option<String>,
        address: Option<String>,
    },
    DataStart,
    MessageEnd,
    MessageAborted,
    Etrn {
        node: smtp_proto::EtrnNode,
    },
    Atrn {
        domains: Vec<String>,
    },
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> OwnedEvent {
        match e {
            Event::Mail { from, .. } => OwnedEvent::Mail {
                sender: from.to_string(),
            },
            Event::Auth {
                mechanism,
                authcid,
                secret,
                ..
            } => OwnedEvent::Auth {
                mechanism: mechanism.name().to_string(),
                authcid,
                secret,
            },
            Event::ScramLookup { authcid, .. } => OwnedEvent::ScramLookup { authcid },
            Event::Rcpt { to, .. } => match &to {
                smtp_proto::ForwardPath::Postmaster => OwnedEvent::Rcpt {
                    domain: None,
                    address: None,
                },
                smtp_proto::ForwardPath::Mailbox(m) => OwnedEvent::Rcpt {
                    domain: Some(m.domain.to_string()),
                    address: Some(m.to_string()),
                },
            },
            Event::DataStart => OwnedEvent::DataStart,
            Event::MessageEnd => OwnedEvent::MessageEnd,
            Event::MessageAborted => OwnedEvent::MessageAborted,
            Event::Etrn { node } => OwnedEvent::Etrn { node },
            Event::Atrn { domains } => OwnedEvent::Atrn { domains },
            Event::NeedMore | Event::Close | Event::Data(_) | Event::StartTls | Event::Turn => {
                unreachable!("handled by the caller")
            }
        }
    }
}
