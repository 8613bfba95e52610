//! The services a listener offers, by their `control/listeners` names.

use std::net::SocketAddr;

use control::{ControlDir, ControlError};

/// Default listener for a fresh home: loopback, unprivileged.
pub const DEFAULT_SMTP_LISTENER: &str = "127.0.0.1:2525";

/// Which service a listener offers (SMTP here; the IMAP/POP3 ones are
/// served by the `proxies` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Plain SMTP with STARTTLS and optional AUTH (port 25).
    Smtp,
    /// Message submission (RFC 6409, port 587): AUTH required.
    Submission,
    /// Implicit TLS (RFC 8314, port 465).
    Smtps,
    /// On-Demand Mail Relay (RFC 2645, port 366): AUTH, then ATRN turns the
    /// connection around (see [`scheduler::turn`]).
    Odmr,
    /// POP3 server on the users' Maildirs (STLS offered).
    Pop3,
    /// POP3 server, implicit TLS.
    Pop3s,
    /// IMAP proxy to the user's mailstore (STARTTLS offered).
    ImapProxy,
    /// IMAP proxy, implicit TLS.
    ImapsProxy,
    /// POP3 proxy to the user's mailstore (STLS offered).
    Pop3Proxy,
    /// POP3 proxy, implicit TLS.
    Pop3sProxy,
    /// Password changes by the users (poppassd, IndiMail's `qmail-poppass.106`).
    Poppass,
    /// poppassd, implicit TLS.
    Poppasss,
    /// Prometheus metrics over HTTP.
    Metrics,
}

impl Service {
    /// Every service, in the order of their names.
    pub const ALL: [Service; 13] = [
        Service::Smtp,
        Service::Submission,
        Service::Smtps,
        Service::Odmr,
        Service::Pop3,
        Service::Pop3s,
        Service::ImapProxy,
        Service::ImapsProxy,
        Service::Pop3Proxy,
        Service::Pop3sProxy,
        Service::Poppass,
        Service::Poppasss,
        Service::Metrics,
    ];

    /// Name in logs, `control/listeners`, `--NAME` options and the ready lines.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Submission => "submission",
            Service::Smtps => "smtps",
            Service::Odmr => "odmr",
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
            Service::ImapProxy => "imap-proxy",
            Service::ImapsProxy => "imaps-proxy",
            Service::Pop3Proxy => "pop3-proxy",
            Service::Pop3sProxy => "pop3s-proxy",
            Service::Poppass => "poppass",
            Service::Poppasss => "poppasss",
            Service::Metrics => "metrics",
        }
    }

    /// The service called `name`.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the listener starts with TLS (needs a certificate).
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Service::Smtps
                | Service::Pop3s
                | Service::ImapsProxy
                | Service::Pop3sProxy
                | Service::Poppasss
        )
    }

    /// Whether this is one of the SMTP services.
    pub fn is_smtp(self) -> bool {
        matches!(
            self,
            Service::Smtp | Service::Submission | Service::Smtps | Service::Odmr
        )
    }
}

/// `control/listeners`: lines `SERVICE ADDR:PORT`; without the file, one SMTP listener on
/// [`DEFAULT_SMTP_LISTENER`]. Every bad line is reported, with its number.
pub fn read_listeners(c: &ControlDir) -> Result<Vec<(Service, SocketAddr)>, Vec<ControlError>> {
    let lines = match c.lines("listeners") {
        Ok(None) => {
            let addr = DEFAULT_SMTP_LISTENER.parse().expect("valid");
            return Ok(vec![(Service::Smtp, addr)]);
        }
        Ok(Some(lines)) => lines,
        Err(e) => return Err(vec![e]),
    };
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for (line, text) in lines {
        let mut words = text.split_whitespace();
        let (service, addr) = (words.next().unwrap_or(""), words.next());
        let problem = match (
            Service::from_name(service),
            addr.map(str::parse::<SocketAddr>),
        ) {
            (Some(svc), Some(Ok(a))) => {
                listeners.push((svc, a));
                continue;
            }
            (Some(_), _) => format!("`{text}`: expected `{service} ADDRESS:PORT`"),
            (None, _) => format!(
                "`{service}`: unknown service (expected one of {})",
                Service::ALL.map(|s| s.name()).join(", ")
            ),
        };
        errors.push(ControlError {
            path: c.file("listeners"),
            line: Some(line),
            problem,
        });
    }
    if errors.is_empty() {
        Ok(listeners)
    } else {
        Err(errors)
    }
}
