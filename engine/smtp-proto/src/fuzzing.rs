//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by a deterministic test
//! that runs them over pseudo-random inputs so that CI exercises them too. Not a public API.

use std::rc::Rc;

use crate::data::{DataScanner, Scan};
use crate::{
    AuthOutcome, AuthSecret, Decision, Event, Reply, ReplyParser, ScramCredentials, Session,
    SessionConfig,
};

/// A tiny deterministic PRNG (xorshift64*), so the harness needs no dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Runs a server session over `data`: the first 8 bytes choose the configuration (including
/// STARTTLS and AUTH settings) and the PRNG seed for split points and decisions; the rest is the client's input, fed in random
/// pieces the way a driver would. Panics (fails the fuzz run) when an invariant breaks.
pub fn session(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (head, input) = data.split_at(8);
    let mut seed = [0u8; 8];
    seed.copy_from_slice(head);
    let mut rng = XorShift::new(u64::from_le_bytes(seed));
    let cfg = fuzzed_config(&seed);
    let max_size = cfg.max_message_size;

    let mut s = Session::new(Rc::new(cfg));
    s.set_auth_entropy(rng.next_u64(), 1_700_000_000);
    let cap = s.max_line();
    s.greet();
    let mut driver = Driver {
        s,
        rng,
        max_size,
        in_message: false,
        message_len: 0,
        data_total: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut consumed_total = 0usize;
    let mut output_total = driver.s.output().len();
    driver.s.consume_output(usize::MAX);
    'outer: while fed < input.len() || !buf.is_empty() {
        let piece = (1 + driver.rng.below(64) as usize).min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + piece]);
        fed += piece;
        loop {
            let (n, ev) = driver.s.feed(&buf);
            assert!(n <= buf.len(), "consumed more than given");
            let next = driver.answer(ev, &buf, n);
            consumed_total += n;
            output_total += driver.s.output().len();
            if next == Next::Ended {
                break 'outer;
            }
            buf.drain(..n);
            driver.s.consume_output(usize::MAX);
            if next == Next::NeedMore {
                // The driver never has to keep more than one capped command line.
                assert!(
                    buf.len() < cap,
                    "unconsumed tail {} >= cap {cap}",
                    buf.len()
                );
                if fed == input.len() {
                    break 'outer;
                }
                break;
            }
        }
    }
    assert!(consumed_total <= input.len());
    assert!(driver.data_total <= consumed_total);
    // Every reply answers at least one consumed byte; the longest (EHLO, HELP) is < 300 bytes
    // for a command of at least 6 bytes, so output stays linear in input.
    assert!(
        output_total <= 64 * consumed_total + 1024,
        "output {output_total} for {consumed_total} bytes of input"
    );
}

/// The session configuration the fuzz input's first 8 bytes choose.
fn fuzzed_config(head: &[u8; 8]) -> SessionConfig {
    let knobs = head[0];
    let mut cfg = SessionConfig::new("mx.example");
    cfg.chunking = knobs & 1 != 0;
    cfg.smtputf8 = knobs & 2 != 0;
    cfg.eightbitmime = knobs & 4 != 0;
    cfg.vrfy_enabled = knobs & 8 != 0;
    if knobs & 16 != 0 {
        cfg.max_command_line = 8 + (head[1] as usize);
        cfg.max_text_line = 4 + (head[2] as usize);
    }
    if knobs & 32 != 0 {
        cfg.max_message_size = u64::from(head[3]) * 4;
    }
    cfg.max_recipients = usize::from(head[4] % 8);
    cfg.max_bad_commands = u32::from(head[5] % 16);
    let tls_knobs = head[6];
    cfg.starttls = tls_knobs & 1 != 0;
    if tls_knobs & 2 != 0 {
        cfg.auth_mechanisms = vec![
            "PLAIN".into(),
            "LOGIN".into(),
            "CRAM-MD5".into(),
            "SCRAM-SHA-256".into(),
        ];
    }
    cfg.auth_plain_needs_tls = tls_knobs & 4 != 0;
    cfg.require_auth = tls_knobs & 8 != 0;
    cfg.require_tls = tls_knobs & 16 != 0;
    if tls_knobs & 32 != 0 {
        cfg.max_auth_line = 8 + usize::from(head[7]);
    }
    cfg.max_auth_failures = u32::from(head[7] % 4);
    cfg.etrn = tls_knobs & 64 != 0;
    cfg.atrn = tls_knobs & 128 != 0;
    cfg.odmr = knobs & 64 != 0;
    cfg
}

/// What the harness does after answering one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Feed the rest of the buffer.
    Feed,
    /// Read more input.
    NeedMore,
    /// The session closed or turned: stop.
    Ended,
}

/// The harness in the driver's seat: answers each event as a driver would, with random
/// decisions, and checks the session's invariants as it goes.
struct Driver {
    s: Session,
    rng: XorShift,
    max_size: u64,
    in_message: bool,
    message_len: u64,
    data_total: usize,
}

impl Driver {
    /// Answers `ev`, which the session returned after consuming `n` bytes of `buf`.
    fn answer(&mut self, ev: Event<'_>, buf: &[u8], n: usize) -> Next {
        let s = &mut self.s;
        let rest = &buf[n..];
        match ev {
            Event::NeedMore => return Next::NeedMore,
            Event::Mail { .. } | Event::Rcpt { .. } => {
                assert!(!self.in_message);
                // A pending question consumes nothing more until answered.
                let (n2, _) = s.feed(rest);
                assert_eq!(n2, 0);
                if self.rng.below(4) == 0 {
                    s.decide(Decision::Reject(Reply::new(550, Some((5, 7, 1)), "no")));
                } else {
                    s.decide(Decision::Accept);
                }
            }
            Event::DataStart => {
                assert!(!self.in_message, "DataStart inside a message");
                self.in_message = true;
                self.message_len = 0;
            }
            Event::Data(d) => {
                assert!(self.in_message, "Data outside a message");
                assert!(!d.is_empty());
                self.message_len += d.len() as u64;
                self.data_total += d.len();
                if self.max_size > 0 {
                    assert!(self.message_len <= self.max_size, "size cap exceeded");
                }
            }
            Event::MessageEnd => {
                assert!(self.in_message);
                self.in_message = false;
                assert_eq!(s.feed(rest), (0, Event::MessageEnd));
                if self.rng.below(3) == 0 {
                    s.message_committed(Err(Reply::new(451, Some((4, 3, 0)), "later")));
                } else {
                    s.message_committed(Ok("id".into()));
                }
            }
            Event::MessageAborted => {
                assert!(self.in_message);
                self.in_message = false;
            }
            Event::StartTls => {
                assert!(!self.in_message);
                assert!(!s.is_tls());
                // Everything after the command is reported consumed, and stays ignored
                // until the handshake is reported.
                assert_eq!(n, buf.len(), "plaintext after STARTTLS left for the driver");
                assert_eq!(s.feed(b"MAIL FROM:<e@x.y>\r\n"), (19, Event::StartTls));
                s.tls_started();
                assert!(s.is_tls());
                assert!(s.envelope().helo.is_none());
            }
            Event::Auth { .. } => {
                assert!(!self.in_message);
                assert_debug_hides_secret(&ev);
                let (n2, _) = s.feed(rest);
                assert_eq!(n2, 0);
                s.auth_result(match self.rng.below(3) {
                    0 => AuthOutcome::Ok,
                    1 => AuthOutcome::Failed,
                    _ => AuthOutcome::TempFail,
                });
                if s.envelope().auth_user.is_some() && s.envelope().esmtp {
                    assert!(s.protocol().ends_with('A'));
                }
            }
            Event::ScramLookup { ref authcid, .. } => {
                assert!(!self.in_message);
                let (n2, _) = s.feed(rest);
                assert_eq!(n2, 0);
                let creds = match self.rng.below(3) {
                    0 => None,
                    _ => Some(ScramCredentials::decoy(authcid, b"fuzz", 4096)),
                };
                s.scram_credentials(creds, "c2VydmVyLW5vbmNl");
                assert!(!s.is_paused());
            }
            Event::Etrn { ref node } => {
                assert!(!self.in_message);
                let again = Event::Etrn { node: node.clone() };
                assert_eq!(s.feed(rest), (0, again));
                s.etrn_result(Reply::new(251, Some((2, 0, 0)), "no message waiting"));
            }
            Event::Atrn { .. } => {
                assert!(!self.in_message);
                assert!(s.envelope().auth_user.is_some());
                if self.rng.below(2) == 0 {
                    s.atrn_result(Ok(()));
                    assert!(s.is_turned());
                } else {
                    s.atrn_result(Err(Reply::new(453, Some((4, 3, 0)), "no mail")));
                }
            }
            Event::Turn => {
                assert!(s.is_turned());
                assert_eq!(s.feed(b"NOOP\r\n"), (0, Event::Turn));
                return Next::Ended;
            }
            Event::Close => {
                assert!(s.is_closed());
                assert_eq!(s.feed(b"NOOP\r\n"), (0, Event::Close));
                return Next::Ended;
            }
        }
        Next::Feed
    }
}

/// The Debug output of an AUTH event does not depend on the secret at all.
fn assert_debug_hides_secret(ev: &Event<'_>) {
    let Event::Auth {
        mechanism,
        authcid,
        authzid,
        secret,
    } = ev
    else {
        return;
    };
    let other = match secret {
        AuthSecret::Password(_) => AuthSecret::Password("x".into()),
        AuthSecret::CramResponse { challenge, .. } => AuthSecret::CramResponse {
            challenge: challenge.clone(),
            digest: "0".into(),
        },
        AuthSecret::Scram { proof_valid } => AuthSecret::Scram {
            proof_valid: *proof_valid,
        },
    };
    let twin = Event::Auth {
        mechanism: *mechanism,
        authcid: authcid.clone(),
        authzid: authzid.clone(),
        secret: other,
    };
    assert_eq!(format!("{ev:?}"), format!("{twin:?}"));
}

/// Client-side helpers on arbitrary bytes: the reply parser must not panic and must respect its
/// caps; `dot_stuff` followed by the server's DATA scanner must give back the input with line
/// ends normalised, ending exactly at the terminator.
pub fn client_side(data: &[u8]) {
    let mut p = ReplyParser::new(64, 256);
    let mut pos = 0;
    while pos < data.len() {
        match p.parse(&data[pos..]) {
            Ok((n, r)) => {
                if let Some(r) = &r {
                    assert!((200..600).contains(&r.code()));
                    assert!(r.text().len() <= 256);
                }
                if n == 0 {
                    break;
                }
                pos += n;
            }
            Err(_) => break,
        }
    }

    let mut stuffed = Vec::new();
    crate::dot_stuff(data, &mut stuffed);
    let mut expect = data.to_vec();
    // Reference normalisation: CRLF, lone CR and lone LF each become one CRLF.
    let mut norm = Vec::with_capacity(expect.len() + 2);
    let mut i = 0;
    while i < expect.len() {
        match expect[i] {
            b'\r' if expect.get(i + 1) == Some(&b'\n') => {
                norm.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => norm.extend_from_slice(b"\r\n"),
            b => norm.push(b),
        }
        i += 1;
    }
    if !norm.is_empty() && !norm.ends_with(b"\r\n") {
        norm.extend_from_slice(b"\r\n");
    }
    expect = norm;
    let mut scanner = DataScanner::new(0, 0);
    let mut got = Vec::new();
    let mut pos = 0;
    loop {
        let (n, scan) = scanner.scan(&stuffed[pos..]);
        let start = pos;
        pos += n;
        match scan {
            Scan::Data(r) => got.extend_from_slice(&stuffed[start + r.start..start + r.end]),
            Scan::End => break,
            Scan::NeedMore => panic!("stuffed data has no end"),
        }
    }
    assert_eq!(pos, stuffed.len(), "end of data found early");
    assert!(scanner.error().is_none());
    assert_eq!(got, expect);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces that steer random input into deep states.
    const TOKENS: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b.c>\r\n",
        b"MAIL FROM:<> SIZE=10 SMTPUTF8\r\n",
        b"RCPT TO:<x@y.z>\r\n",
        b"RCPT TO:<\xc3\xbc@y.z>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 3 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r",
        b".",
        b"..",
        b"\r",
        b"\n",
        b"\r\n",
        b"hello world",
        b"VRFY x\r\n",
        b"HELP\r\n",
        b"STARTTLS\r\n",
        b"STARTTLS\r\nMAIL FROM:<evil@e.example>\r\n",
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH LOGIN YWxpY2U=\r\n",
        b"AUTH CRAM-MD5\r\n",
        b"AUTH XOAUTH2 abc\r\n",
        b"YWxpY2U=\r\n",
        b"c2VjcmV0\r\n",
        b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n",
        b"AGFsaWNlAHNlY3JldA==\r\n",
        b"*\r\n",
        b"=\r\n",
        b"!!!\r\n",
        b"ETRN held.example\r\n",
        b"ETRN @b.c\r\n",
        b"ETRN\r\n",
        b"ATRN a.example,b.example\r\n",
        b"ATRN\r\n",
        b"220 node.example ESMTP\r\n",
    ];

    fn input(rng: &mut XorShift) -> Vec<u8> {
        let mut v: Vec<u8> = (0..8).map(|_| rng.next_u64() as u8).collect();
        let n = rng.below(40);
        for _ in 0..n {
            if rng.below(4) == 0 {
                let len = rng.below(80) as usize;
                v.extend((0..len).map(|_| rng.next_u64() as u8));
            } else {
                v.extend_from_slice(TOKENS[rng.below(TOKENS.len() as u64) as usize]);
            }
        }
        v
    }

    #[test]
    fn session_harness_on_pseudo_random_inputs() {
        let mut rng = XorShift::new(0x5EED_0001);
        for _ in 0..4000 {
            session(&input(&mut rng));
        }
    }

    #[test]
    fn client_side_harness_on_pseudo_random_inputs() {
        let mut rng = XorShift::new(0x5EED_0002);
        for _ in 0..4000 {
            client_side(&input(&mut rng));
        }
        client_side(b"");
        client_side(b".\r\n..\n\r.\r\r\n");
    }
}
