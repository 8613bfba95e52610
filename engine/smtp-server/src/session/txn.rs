//! What the access controls decided for one transaction, and the DNSBL answer awaited at MAIL.

/// A connection's DNSBL answer: asked at connect, needed at MAIL.
pub(super) enum Dnsbl {
    Pending(tokio::task::JoinHandle<Option<policy::Verdict>>),
    Done(Option<policy::Verdict>),
}

/// `VAR=val,VAR2=<unset>` for the log.
pub(super) fn env_text(env: &[policy::EnvAssign]) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("<unset>")))
        .collect::<Vec<_>>()
        .join(",")
}

impl Txn {
    /// The variables an envrules line (`from.envrules`, `auth.envrules`)
    /// sets for this message: DATABYTES, RELAYCLIENT, NULLQUEUE, QUARANTINE
    /// (those naming control files act in the `policy` crate).
    pub(super) fn apply_env(&mut self, env: &[policy::EnvAssign]) {
        for (var, value) in env {
            match (var.as_str(), value) {
                ("DATABYTES", Some(n)) => self.databytes = n.trim().parse().ok(),
                ("DATABYTES", None) => self.databytes = None,
                ("RELAYCLIENT", Some(_)) => self.relay = true,
                ("RELAYCLIENT", None) => self.relay = false,
                ("NULLQUEUE", Some(_)) => self.nullqueue = true,
                ("NULLQUEUE", None) => self.nullqueue = false,
                ("QUARANTINE", q) => self.quarantine = q.clone().filter(|q| !q.is_empty()),
                _ => {}
            }
        }
    }
}

/// What the access controls decided for the current transaction.
#[derive(Default)]
pub(super) struct Txn {
    /// `Received-SPF:` for the message, when SPF was evaluated.
    pub(super) spf_header: Option<String>,
    /// Envelope sender as given at MAIL.
    pub(super) sender: String,
    /// `relaymailfrom` or an envrules `RELAYCLIENT`: relay for this message.
    pub(super) relay: bool,
    /// Blackholed (blackholedsender/rcpt, bodycheck blackhole, NULLQUEUE):
    /// answer 250 and store nothing.
    pub(super) nullqueue: bool,
    /// An envrules `DATABYTES` for this message only.
    pub(super) databytes: Option<u64>,
    /// bodycheck, scanning the message once as it streams in.
    pub(super) scanner: Option<policy::BodyScanner>,
    /// An envrules `QUARANTINE` address for this message.
    pub(super) quarantine: Option<String>,
    /// Header rules (`removeheaders`, `envheaders`, `logheaders`) applied
    /// once as the header block streams in, and its output buffer.
    pub(super) headers: Option<msgproc::HeaderProcessor>,
    pub(super) header_out: Vec<u8>,
    /// The SPF result word and MAIL FROM, for `Authentication-Results:`.
    pub(super) spf_result: Option<(String, String)>,
    /// Message plugins on: the message as received (SMTP form), held until
    /// the end of DATA, and the trace lines to write after the headers the
    /// plugins make (see [`Connection::release_held`]).
    pub(super) held: Option<Vec<u8>>,
    pub(super) held_prefix: String,
    /// `Received:`/`Delivered-To:` fields of the message (loop guard).
    pub(super) hops: smtp_proto::HopCounter,
    /// `domainqueue` assignments of the accepted recipients, merged.
    pub(super) queue_env: Vec<policy::EnvAssign>,
}
