//! Mail transactions on a client session: MAIL, RCPT and DATA (pipelined in one batch when the
//! server offers PIPELINING, RFC 2920 section 3.1), the per-recipient results, and the RSET that
//! opens every transaction after the first on a reused connection.

use std::collections::VecDeque;

use super::{ClientError, ClientEvent, ClientSession, Expect, State};
use crate::reply::{push_number, Reply};

/// One message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Sender address without brackets; empty for the null sender.
    pub from: String,
    /// Recipient addresses without brackets.
    pub to: Vec<String>,
    /// Size of the message in octets, for `SIZE=` (RFC 1870) when the server offers SIZE.
    pub size: Option<u64>,
    /// The message has 8-bit content: `BODY=8BITMIME` when offered.
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (UTF-8 addresses or headers).
    pub smtputf8: bool,
}

/// Final state of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility (250 after the data); the reply is that 250.
    Delivered(Reply),
    /// 4xx (or a connection-level failure): try again later.
    Deferred(Reply),
    /// 5xx: bounce.
    Failed(Reply),
}

impl RcptOutcome {
    fn from_reply(r: &Reply) -> RcptOutcome {
        if r.is_positive() {
            RcptOutcome::Delivered(r.clone())
        } else if r.is_permanent() {
            RcptOutcome::Failed(r.clone())
        } else {
            RcptOutcome::Deferred(r.clone())
        }
    }
}

/// Result for one recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptResult {
    /// The recipient as given.
    pub to: String,
    /// The reply to its RCPT (None when RCPT was never answered because MAIL failed first).
    pub rcpt_reply: Option<Reply>,
    /// What became of it.
    pub outcome: RcptOutcome,
}

#[derive(Debug)]
pub(super) struct Transaction {
    msg: OutgoingMessage,
    /// `SMTPUTF8` goes on MAIL.
    utf8: bool,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    /// Commands not yet sent (without PIPELINING they go one per reply). Each is written when
    /// it goes out, from `msg`: no buffer per command.
    unsent: VecDeque<Expect>,
    message_reply: Option<Reply>,
}

fn has_bad_chars(s: &str) -> bool {
    // Bytes first (every relayed address passes here); chars only for non-ASCII (C1 controls).
    s.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
        || (!s.is_ascii() && s.chars().any(char::is_control))
}

/// A reply made up by the client for a step the server never answered.
fn no_reply(what: &str) -> Reply {
    Reply::new(451, Some((4, 4, 2)), what)
}

impl Transaction {
    fn mail_ok(&self) -> bool {
        self.mail_reply.as_ref().is_some_and(Reply::is_positive)
    }

    fn any_rcpt_ok(&self) -> bool {
        self.rcpt_replies.iter().flatten().any(Reply::is_positive)
    }

    /// Appends the command `e` stands for, with its CRLF.
    fn write_command(&self, e: Expect, size_offered: bool, eightbitmime: bool, out: &mut Vec<u8>) {
        match e {
            Expect::Rset => out.extend_from_slice(b"RSET"),
            Expect::Mail => {
                out.extend_from_slice(b"MAIL FROM:<");
                out.extend_from_slice(self.msg.from.as_bytes());
                out.push(b'>');
                if let (Some(size), true) = (self.msg.size, size_offered) {
                    out.extend_from_slice(b" SIZE=");
                    push_number(out, size);
                }
                if self.msg.eight_bit && eightbitmime {
                    out.extend_from_slice(b" BODY=8BITMIME");
                }
                if self.utf8 {
                    out.extend_from_slice(b" SMTPUTF8");
                }
            }
            Expect::Rcpt(i) => {
                out.extend_from_slice(b"RCPT TO:<");
                out.extend_from_slice(self.msg.to[i].as_bytes());
                out.push(b'>');
            }
            Expect::Data => out.extend_from_slice(b"DATA"),
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl ClientSession {
    /// Starts a transaction. Only in the [`ClientEvent::Ready`] state. A message the server
    /// cannot take (SIZE exceeded, SMTPUTF8 needed but not offered) or a bad address is refused
    /// here, before anything is sent; the session stays ready.
    pub fn send_mail(&mut self, msg: OutgoingMessage) -> Result<(), ClientError> {
        if !self.is_ready() {
            return Err(ClientError::WrongState("not ready"));
        }
        if msg.to.is_empty() {
            return Err(ClientError::NoRecipients);
        }
        if let Some(bad) = std::iter::once(&msg.from)
            .chain(msg.to.iter())
            .find(|a| has_bad_chars(a))
        {
            return Err(ClientError::BadAddress(bad.clone()));
        }
        if msg.to.iter().any(|t| t.is_empty()) {
            return Err(ClientError::BadAddress(String::new()));
        }
        let utf8 = msg.smtputf8 || !msg.from.is_ascii() || msg.to.iter().any(|t| !t.is_ascii());
        if utf8 && !self.caps.smtputf8 {
            return Err(ClientError::SmtpUtf8NotOffered);
        }
        if let (Some(size), Some(max)) = (msg.size, self.caps.size) {
            if size > max {
                return Err(ClientError::MessageTooBig { size, max });
            }
        }
        let mut unsent = VecDeque::with_capacity(msg.to.len() + 3);
        // A reused connection starts with RSET, whose reply also proves the idle connection
        // is still alive.
        if self.used {
            unsent.push_back(Expect::Rset);
        }
        unsent.push_back(Expect::Mail);
        unsent.extend((0..msg.to.len()).map(Expect::Rcpt));
        unsent.push_back(Expect::Data);
        self.tx = Some(Transaction {
            rcpt_replies: vec![None; msg.to.len()],
            msg,
            utf8,
            mail_reply: None,
            unsent,
            message_reply: None,
        });
        self.used = true;
        self.state = State::Talking;
        self.send_next();
        Ok(())
    }

    /// Sends all remaining commands (PIPELINING: DATA is the last of the group) or the next one.
    fn send_next(&mut self) {
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let (size, eight) = (self.caps.size_offered, self.caps.eightbitmime);
        while let Some(e) = tx.unsent.pop_front() {
            tx.write_command(e, size, eight, &mut self.out);
            self.expect.push_back(e);
            if !self.caps.pipelining {
                break;
            }
        }
    }

    pub(super) fn on_transaction_reply(&mut self, expect: Expect, reply: Reply) {
        if reply.code() == 421 && expect != Expect::Message {
            // Service closing: every recipient is deferred, the rest is not waited for.
            return self.abort_closing(reply);
        }
        let pipelining = self.caps.pipelining;
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        match expect {
            Expect::Rset => {}
            Expect::Mail => {
                let ok = reply.is_positive();
                tx.mail_reply = Some(reply);
                if !ok {
                    // Without pipelining nothing else was sent; with it, the answers to the
                    // RCPTs and DATA already sent are read and ignored.
                    tx.unsent.clear();
                    return self.maybe_finish();
                }
            }
            Expect::Rcpt(i) => {
                if tx.mail_ok() {
                    if let Some(slot) = tx.rcpt_replies.get_mut(i) {
                        *slot = Some(reply);
                    }
                }
                let rcpts_done = !tx.unsent.iter().any(|e| matches!(e, Expect::Rcpt(_)))
                    && !self.expect.iter().any(|e| matches!(e, Expect::Rcpt(_)));
                if rcpts_done && !tx.any_rcpt_ok() && !pipelining {
                    // No point in DATA.
                    tx.unsent.clear();
                    return self.maybe_finish();
                }
            }
            Expect::Data => {
                let deliverable = tx.mail_ok() && tx.any_rcpt_ok();
                if reply.code() == 354 {
                    if deliverable {
                        self.state = State::SendingData;
                    } else {
                        // RFC 2920 3.1: DATA accepted with no valid recipient: send only the dot.
                        self.out.extend_from_slice(b".\r\n");
                        self.expect.push_back(Expect::Message);
                        tx.message_reply = None;
                    }
                    return;
                }
                if deliverable {
                    tx.message_reply = Some(reply);
                }
                return self.maybe_finish();
            }
            Expect::Message => {
                if tx.mail_ok() && tx.any_rcpt_ok() {
                    tx.message_reply = Some(reply);
                }
                return self.maybe_finish();
            }
            _ => return,
        }
        self.send_next();
    }

    /// A 421 in the middle of a transaction: all recipients deferred, the session is over.
    fn abort_closing(&mut self, reply: Reply) {
        let Some(tx) = self.tx.take() else {
            self.state = State::Closed;
            return;
        };
        let per_rcpt = tx
            .msg
            .to
            .into_iter()
            .zip(tx.rcpt_replies)
            .map(|(to, rcpt_reply)| RcptResult {
                to,
                rcpt_reply,
                outcome: RcptOutcome::Deferred(reply.clone()),
            })
            .collect();
        self.done = Some(ClientEvent::TransactionDone {
            mail_reply: tx.mail_reply.unwrap_or_else(|| reply.clone()),
            per_rcpt,
            message_reply: None,
        });
        self.state = State::Closed;
    }

    /// Finishes the transaction once no reply for it is outstanding.
    fn maybe_finish(&mut self) {
        let outstanding = self.expect.iter().any(|e| {
            matches!(
                e,
                Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Message
            )
        });
        if outstanding {
            return;
        }
        let Some(tx) = self.tx.take() else {
            return;
        };
        let mail_reply = tx
            .mail_reply
            .unwrap_or_else(|| no_reply("no reply to MAIL"));
        let message_reply = tx.message_reply;
        let per_rcpt = tx
            .msg
            .to
            .into_iter()
            .zip(tx.rcpt_replies)
            .map(|(to, rcpt_reply)| {
                let outcome = if !mail_reply.is_positive() {
                    RcptOutcome::from_reply(&mail_reply)
                } else {
                    match (&rcpt_reply, &message_reply) {
                        (Some(r), Some(m)) if r.is_positive() => RcptOutcome::from_reply(m),
                        (Some(r), None) if r.is_positive() => {
                            RcptOutcome::Deferred(no_reply("no reply after data"))
                        }
                        (Some(r), _) => RcptOutcome::from_reply(r),
                        (None, _) => RcptOutcome::Deferred(no_reply("no reply to RCPT")),
                    }
                };
                RcptResult {
                    to,
                    rcpt_reply,
                    outcome,
                }
            })
            .collect();
        let closing =
            mail_reply.code() == 421 || message_reply.as_ref().is_some_and(|r| r.code() == 421);
        self.done = Some(ClientEvent::TransactionDone {
            mail_reply,
            per_rcpt,
            message_reply,
        });
        // The next transaction on this connection starts with RSET.
        self.state = if closing { State::Closed } else { State::Ready };
    }

    /// Call after writing the message body and its terminator following
    /// [`ClientEvent::SendData`].
    pub fn data_sent(&mut self) -> Result<(), ClientError> {
        if self.state != State::SendingData {
            return Err(ClientError::WrongState("not sending data"));
        }
        self.state = State::Talking;
        self.expect.push_back(Expect::Message);
        Ok(())
    }
}
