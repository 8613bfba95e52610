//! [`SessionConfig`]: what a listener offers and allows, shared by its sessions.

/// Settings of one listener, shared by its sessions. Mirrors qmail-smtpd's control files
/// (`me`, `smtpgreeting`, `databytes`, `maxrecipients`, `maxcmdlen`) and environment switches.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our host name, used in the 220, EHLO, 221 and 421 lines (control file `me`).
    pub hostname: String,
    /// Text after `220 ` in the greeting (`smtpgreeting`); default hostname + " ESMTP".
    pub greeting: String,
    /// Largest message accepted, in octets as stored (`databytes`, env `DATABYTES`); 0 means
    /// unlimited. Advertised as `SIZE n` (plain `SIZE` when 0).
    pub max_message_size: u64,
    /// Recipients per transaction (`maxrecipients`); beyond it RCPT gets 452 4.5.3. 0 means no
    /// limit.
    pub max_recipients: usize,
    /// Bad commands tolerated before `421 4.7.0` and close. 0 means no limit.
    pub max_bad_commands: u32,
    /// Longest command line, CRLF included (`maxcmdlen`); longer lines get 500 5.5.2 and are
    /// discarded without being buffered. RFC 5321 4.5.3.1.4 sets 512 as the minimum to accept.
    pub max_command_line: usize,
    /// Longest text line inside DATA, CRLF included (RFC 5321 4.5.3.1.6: 1000). A longer line
    /// makes the message refused at its end with 500 5.5.2; it is never buffered. 0: no limit.
    pub max_text_line: usize,
    /// Advertise and accept BDAT (RFC 3030).
    pub chunking: bool,
    /// Advertise and accept SMTPUTF8 (RFC 6531; env `SMTPUTF8`).
    pub smtputf8: bool,
    /// Advertise PIPELINING (RFC 2920). Pipelined input is handled correctly either way.
    pub pipelining: bool,
    /// Advertise and accept BODY=8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// VRFY answers 252 2.5.2 when true, 502 5.5.1 when false (env `DISABLE_VRFY`).
    pub vrfy_enabled: bool,
    /// Extra EHLO keywords, listed after the built-in ones and before `HELP`. (STARTTLS and
    /// AUTH have their own settings below; do not list them here too.)
    pub extra_ehlo: Vec<String>,
    /// Offer and accept STARTTLS (RFC 3207; env `STARTTLS`). Advertised only while the session
    /// is not under TLS yet. The driver must have a usable certificate before enabling it.
    pub starttls: bool,
    /// SASL mechanisms offered in `AUTH`, in order, e.g. `["LOGIN", "PLAIN", "CRAM-MD5"]`
    /// (IndiMail: AUTH on when auth programs are configured, minus `DISABLE_AUTH_*`). Names the
    /// core cannot run (see [`AuthMechanism`]) are ignored. Empty: AUTH is not offered and the
    /// command gets 502.
    pub auth_mechanisms: Vec<String>,
    /// Offer PLAIN and LOGIN only under TLS (env `SECURE_AUTH`); trying them in clear text gets
    /// `538 5.7.11`.
    pub auth_plain_needs_tls: bool,
    /// No MAIL before a successful AUTH: `530 5.7.0` (env `REQUIREAUTH`; submission).
    pub require_auth: bool,
    /// No MAIL, RCPT or AUTH before STARTTLS: `530 5.7.0 Must issue a STARTTLS command first`
    /// (env `FORCE_TLS`). AUTH is not advertised before TLS then.
    pub require_tls: bool,
    /// Failed AUTH attempts before `421 4.7.0` and close. 0 means no limit.
    pub max_auth_failures: u32,
    /// Longest AUTH command line and SASL response line, CRLF included (RFC 4954 section 4:
    /// 12288). Longer responses end the exchange with `500 5.5.6`.
    pub max_auth_line: usize,
    /// Advertise and accept ETRN (RFC 1985); off: 502 (IndiMail's submission port).
    pub etrn: bool,
    /// Advertise and accept ATRN (RFC 2645; IndiMail's ODMR port 366). ATRN needs a
    /// successful AUTH first (`530 5.7.0`).
    pub atrn: bool,
    /// On-Demand Mail Relay mode (RFC 2645, port 366): only HELO, EHLO, AUTH, STARTTLS, ATRN,
    /// ETRN, HELP, NOOP, RSET and QUIT are served; mail transactions and VRFY get 502 and the
    /// EHLO reply lists only what applies.
    pub odmr: bool,
}

impl SessionConfig {
    /// Defaults with the given host name and the greeting derived from it.
    pub fn new(hostname: impl Into<String>) -> SessionConfig {
        let hostname = hostname.into();
        SessionConfig {
            greeting: format!("{hostname} ESMTP"),
            hostname,
            max_message_size: 0,
            max_recipients: 100,
            max_bad_commands: 10,
            max_command_line: 512,
            max_text_line: 1000,
            chunking: true,
            smtputf8: true,
            pipelining: true,
            eightbitmime: true,
            vrfy_enabled: true,
            extra_ehlo: Vec::new(),
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_plain_needs_tls: true,
            require_auth: false,
            require_tls: false,
            max_auth_failures: 3,
            max_auth_line: 12288,
            etrn: false,
            atrn: false,
            odmr: false,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::new("localhost")
    }
}
