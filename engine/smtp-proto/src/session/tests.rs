//! Session tests: whole transcripts fed split at every byte, pipelining, smuggling, limits.

use super::*;
use crate::address::Mailbox;
use crate::{AuthOutcome, AuthSecret};

/// What a driver saw while running a session to the end of its input.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    output: String,
    /// Committed messages.
    messages: Vec<Vec<u8>>,
    aborted: usize,
    data_starts: usize,
    mails: Vec<String>,
    rcpts: Vec<String>,
    closed: bool,
    /// Unconsumed bytes left at the end.
    left: usize,
    /// STARTTLS handshakes run.
    starttls: usize,
    /// AUTH attempts as `MECH authcid [authzid]` (never the secret).
    auths: Vec<String>,
    /// `auth_user` at the end.
    auth_user: Option<String>,
    protocol: &'static str,
    /// ETRN and ATRN requests, as `ETRN {node:?}` / `ATRN d1,d2`.
    turns: Vec<String>,
    /// The session turned around (ATRN accepted).
    turned: bool,
}

type Policy = fn(&Event<'_>) -> Decision;

fn accept_all(_: &Event<'_>) -> Decision {
    Decision::Accept
}

/// The "directory": alice/secret is valid, password `down` is a temporary failure, and the
/// CRAM-MD5 response of RFC 2195's example (tim, tanstaaftanstaaf) is valid for its challenge.
fn check_auth(ev: &Event<'_>) -> AuthOutcome {
    let Event::Auth {
        authcid, secret, ..
    } = ev
    else {
        panic!("not an auth event");
    };
    match secret {
        AuthSecret::Password(p) if p == "down" => AuthOutcome::TempFail,
        AuthSecret::Password(p) if authcid == "alice" && p == "secret" => AuthOutcome::Ok,
        AuthSecret::Scram { proof_valid: true } if authcid != "disabled" => AuthOutcome::Ok,
        AuthSecret::CramResponse { challenge, digest }
            if authcid == "tim"
                && challenge == "<1896.697170952@postoffice.reston.mci.net>"
                && digest == "b913a602c7eda7a495b4e6e7334d3890" =>
        {
            AuthOutcome::Ok
        }
        _ => AuthOutcome::Failed,
    }
}

/// A driver: feeds `pieces` one after the other, keeping the unconsumed tail as a real driver
/// would, accepting or rejecting per `policy`, committing every complete message.
fn drive_with(cfg: &SessionConfig, pieces: &[&[u8]], policy: Policy) -> Outcome {
    let mut s = Session::new(Rc::new(cfg.clone()));
    s.set_auth_entropy(1896, 697_170_952);
    s.greet();
    let mut o = Outcome::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let mut out = Vec::new();
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut consumed = 0;
    'pieces: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = s.feed(&buf);
            assert!(n <= buf.len());
            let mut stop = false;
            match ev {
                Event::NeedMore => stop = true,
                Event::Mail { ref from, .. } => {
                    o.mails.push(from.to_string());
                    let d = policy(&ev);
                    s.decide(d);
                }
                Event::Rcpt { ref to, .. } => {
                    o.rcpts.push(to.to_string());
                    let d = policy(&ev);
                    s.decide(d);
                }
                Event::DataStart => {
                    assert!(cur.is_none(), "DataStart inside a message");
                    o.data_starts += 1;
                    cur = Some(Vec::new());
                }
                Event::Data(d) => {
                    assert!(!d.is_empty());
                    cur.as_mut()
                        .expect("Data outside a message")
                        .extend_from_slice(d);
                }
                Event::MessageEnd => {
                    o.messages
                        .push(cur.take().expect("MessageEnd outside a message"));
                    s.message_committed(Ok(format!("q{}", o.messages.len())));
                }
                Event::MessageAborted => {
                    cur.take().expect("MessageAborted outside a message");
                    o.aborted += 1;
                }
                Event::Close => {
                    o.closed = true;
                    assert!(s.is_closed());
                    assert_eq!(s.feed(b"NOOP\r\n"), (0, Event::Close));
                }
                Event::StartTls => {
                    // The session took every byte; the driver drops them (drain below) and
                    // what comes next is the decrypted stream.
                    assert_eq!(n, buf.len());
                    o.starttls += 1;
                    s.tls_started();
                }
                Event::Auth {
                    mechanism,
                    ref authcid,
                    ref authzid,
                    ..
                } => {
                    let mut a = format!("{mechanism} {authcid}");
                    if let Some(z) = authzid {
                        a.push(' ');
                        a.push_str(z);
                    }
                    o.auths.push(a);
                    assert_eq!(s.feed(b"NOOP\r\n").0, 0);
                    let verdict = check_auth(&ev);
                    s.auth_result(verdict);
                }
                Event::ScramLookup { ref authcid, .. } => {
                    o.auths.push(format!("lookup {authcid}"));
                    assert_eq!(s.feed(b"NOOP\r\n").0, 0);
                    assert!(s.is_paused());
                    s.scram_credentials(scram_directory(authcid), RFC7677_SERVER_NONCE);
                }
                Event::Etrn { ref node } => {
                    o.turns.push(format!("ETRN {node:?}"));
                    assert_eq!(s.feed(b"NOOP\r\n").0, 0);
                    // The "etrnhosts": held.example, with 2 messages waiting.
                    let r = match node {
                        EtrnNode::Domain(d) if d == "held.example" => Reply::new(
                            253,
                            Some((2, 0, 0)),
                            "OK, 2 pending messages for node held.example started",
                        ),
                        _ => Reply::new(553, Some((5, 7, 1)), "etrn service rejected"),
                    };
                    s.etrn_result(r);
                }
                Event::Atrn { ref domains } => {
                    o.turns.push(format!("ATRN {}", domains.join(",")));
                    assert_eq!(s.feed(b"NOOP\r\n").0, 0);
                    if domains.iter().any(|d| d == "nomail.example") {
                        s.atrn_result(Err(Reply::new(453, Some((4, 3, 0)), "No message waiting")));
                    } else {
                        s.atrn_result(Ok(()));
                    }
                }
                Event::Turn => {
                    assert!(s.is_turned());
                    assert_eq!(s.feed(b"NOOP\r\n"), (0, Event::Turn));
                    o.turned = true;
                }
            }
            buf.drain(..n);
            consumed += n;
            out.extend_from_slice(s.output());
            let len = s.output().len();
            s.consume_output(len);
            if o.closed || o.turned {
                break 'pieces;
            }
            if stop {
                // The core never makes the driver hold more than one command line.
                if matches!(s.mode, Mode::ExpectCommand | Mode::ExpectSaslResponse(_)) {
                    assert!(buf.len() < s.max_line(), "tail {}", buf.len());
                } else {
                    assert!(buf.is_empty(), "tail in mode {:?}", s.mode);
                }
                break;
            }
        }
    }
    o.left = total - consumed;
    o.output = String::from_utf8(out).unwrap();
    o.auth_user = s.envelope().auth_user.clone();
    o.protocol = s.protocol();
    o
}

fn drive(cfg: &SessionConfig, input: &[u8]) -> Outcome {
    drive_with(cfg, &[input], accept_all)
}

/// Runs `input` whole, split at every byte boundary, and one byte at a time; all must agree.
fn drive_all_splits(cfg: &SessionConfig, input: &[u8], policy: Policy) -> Outcome {
    let whole = drive_with(cfg, &[input], policy);
    for k in 0..=input.len() {
        let split = drive_with(cfg, &[&input[..k], &input[k..]], policy);
        assert_eq!(split, whole, "split at {k}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(drive_with(cfg, &bytes, policy), whole, "byte at a time");
    whole
}

fn cfg() -> SessionConfig {
    SessionConfig::new("mx.example")
}

const EHLO_REPLY: &str = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n\
    250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 HELP\r\n";

#[test]
fn rfc5321_transcript_split_everywhere() {
    let input = b"EHLO client.example\r\n\
        MAIL FROM:<Smith@bar.com>\r\n\
        RCPT TO:<Jones@foo.com>\r\n\
        RCPT TO:<Green@foo.com>\r\n\
        DATA\r\n\
        Subject: hi\r\n\
        \r\n\
        ..leading dot\r\n\
        .\r\n\
        QUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    let expect = format!(
        "220 mx.example ESMTP\r\n{EHLO_REPLY}\
         250 2.1.0 Sender ok\r\n\
         250 2.1.5 Recipient ok\r\n\
         250 2.1.5 Recipient ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n\
         250 2.0.0 ok q1\r\n\
         221 2.0.0 mx.example closing connection\r\n"
    );
    assert_eq!(o.output, expect);
    assert_eq!(
        o.messages,
        vec![b"Subject: hi\r\n\r\n.leading dot\r\n".to_vec()]
    );
    assert_eq!(o.mails, vec!["Smith@bar.com"]);
    assert_eq!(o.rcpts, vec!["Jones@foo.com", "Green@foo.com"]);
    assert!(o.closed);
}

#[test]
fn helo_transcript_and_two_messages() {
    let input = b"HELO relay.example\r\n\
        MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\na\r\n.\r\n\
        MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n\
        QUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(o.messages, vec![b"a\r\n".to_vec(), Vec::new()]);
    assert_eq!(o.mails, vec!["", "a@b.example"]);
    assert_eq!(o.rcpts, vec!["postmaster", "c@d.example"]);
    assert!(o
        .output
        .starts_with("220 mx.example ESMTP\r\n250 mx.example\r\n"));
    assert!(o.output.contains("250 2.0.0 ok q1\r\n"));
    assert!(o.output.contains("250 2.0.0 ok q2\r\n"));
}

#[test]
fn pipelining_pauses_for_decisions_and_batches_replies() {
    let mut s = Session::new(Rc::new(cfg()));
    let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nRCPT TO:<bad@y.z>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
    let mut pos = 0;
    let (n, ev) = s.feed(&input[pos..]);
    assert_eq!(n, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n".len());
    assert!(matches!(ev, Event::Mail { .. }));
    pos += n;
    // Still pending: the same question, nothing consumed.
    let (n, ev) = s.feed(&input[pos..]);
    assert_eq!(n, 0);
    assert!(matches!(ev, Event::Mail { .. }));
    assert!(s.is_paused());
    s.decide(Decision::Accept);
    let (n, ev) = s.feed(&input[pos..]);
    pos += n;
    assert!(matches!(ev, Event::Rcpt { .. }));
    s.decide(Decision::Accept);
    let (n, ev) = s.feed(&input[pos..]);
    pos += n;
    assert!(matches!(ev, Event::Rcpt { .. }));
    s.decide(Decision::Reject(Reply::new(
        550,
        Some((5, 1, 1)),
        "no such user",
    )));
    let (n, ev) = s.feed(&input[pos..]);
    pos += n;
    assert_eq!(ev, Event::DataStart);
    // Every reply of the batch is queued, in order, before anything was flushed.
    assert_eq!(
        String::from_utf8_lossy(s.output()),
        format!(
            "{}250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n550 5.1.1 no such user\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n",
            EHLO_REPLY
        )
    );
    assert_eq!(s.envelope().recipients.len(), 1);
    let (n, ev) = s.feed(&input[pos..]);
    pos += n;
    assert_eq!(ev, Event::Data(b"hi\r\n"));
    let (n, ev) = s.feed(&input[pos..]);
    pos += n;
    assert_eq!(ev, Event::MessageEnd);
    assert_eq!(s.feed(&input[pos..]), (0, Event::MessageEnd));
    assert_eq!(
        s.envelope().reverse_path,
        Some(ReversePath::Mailbox(Mailbox {
            local_part: "a".into(),
            domain: crate::Domain::Name("b.c".into())
        }))
    );
    s.message_committed(Err(Reply::new(451, Some((4, 3, 0)), "queue trouble")));
    assert!(s.envelope().reverse_path.is_none());
    let (n, ev) = s.feed(&input[pos..]);
    assert_eq!(ev, Event::Close);
    assert_eq!(pos + n, input.len());
    assert!(String::from_utf8_lossy(s.output())
        .ends_with("451 4.3.0 queue trouble\r\n221 2.0.0 mx.example closing connection\r\n"));
}

/// SMTP smuggling: none of these sequences may end the message. Each contains a bare CR or LF,
/// so the message is refused at the real CRLF.CRLF, with no second transaction.
#[test]
fn smuggling_variants_never_end_or_start_a_message() {
    let variants: &[&[u8]] = &[
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\n.\r",
        b"\r.\n",
        b"\r\n.\r\r\n",
        b"\r\n\r.\r\n",
        b"\r\n\n.\r\n",
    ];
    for v in variants {
        let mut input =
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nSubject: t\r\n\r\nbody"
                .to_vec();
        input.extend_from_slice(v);
        input.extend_from_slice(
            b"MAIL FROM:<evil@e.example>\r\nRCPT TO:<victim@y.z>\r\nDATA\r\nsmuggled\r\n\r\n.\r\nNOOP\r\n",
        );
        let o = drive_all_splits(&cfg(), &input, accept_all);
        let shown = String::from_utf8_lossy(v).escape_debug().to_string();
        assert_eq!(o.messages.len(), 0, "{shown}");
        assert_eq!(o.aborted, 1, "{shown}");
        assert_eq!(o.data_starts, 1, "{shown}");
        assert_eq!(o.mails, vec!["a@b.c"], "{shown}");
        assert!(
            o.output
                .contains("550 5.6.11 bare CR or LF in message refused\r\n250 2.0.0 ok\r\n"),
            "{shown}"
        );
    }
}

#[test]
fn smuggling_with_clean_message_first() {
    // The first message ends properly; a smuggling attempt in the second is refused, and the
    // first stays intact.
    let input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\none\r\n.\r\n\
        MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\ntwo\n.\nMAIL FROM:<e@e.e>\r\n.\r\nQUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(o.messages, vec![b"one\r\n".to_vec()]);
    assert_eq!(o.aborted, 1);
    assert_eq!(o.mails, vec!["a@b.c", "a@b.c"]);
    assert!(o.closed);
}

#[test]
fn dot_unstuffing() {
    let input = b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n\
        ..\r\n...x\r\na.b\r\n.. \r\n..\r\n.\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(o.messages, vec![b".\r\n..x\r\na.b\r\n. \r\n.\r\n".to_vec()]);
}

#[test]
fn message_size_limit() {
    let mut c = cfg();
    c.max_message_size = 100;
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=101\r\nMAIL FROM:<a@b.c> SIZE=100\r\nRCPT TO:<x@y.z>\r\nDATA\r\n".to_vec();
    for _ in 0..10 {
        input.extend_from_slice(b"0123456789012345678\r\n");
    }
    input.extend_from_slice(b".\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n");
    input.extend_from_slice(&b"x".repeat(98));
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let o = drive_all_splits(&c, &input, accept_all);
    assert!(o.output.contains("250-SIZE 100\r\n"));
    assert!(o
        .output
        .contains("552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.1.0"));
    assert!(o.output.contains("354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.1.0"));
    assert_eq!(o.aborted, 1);
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0].len(), 100);
    assert!(o.closed);
}

#[test]
fn command_line_too_long() {
    let mut c = cfg();
    c.max_command_line = 64;
    let mut input = b"NOOP ".to_vec();
    input.extend_from_slice(&b"x".repeat(200));
    input.extend_from_slice(b"\r\nNOOP ");
    input.extend_from_slice(&b"y".repeat(57)); // exactly 64 with CRLF
    input.extend_from_slice(b"\r\nQUIT\r\n");
    let o = drive_all_splits(&c, &input, accept_all);
    assert_eq!(
        o.output,
        "220 mx.example ESMTP\r\n500 5.5.2 Line too long\r\n250 2.0.0 ok\r\n\
         221 2.0.0 mx.example closing connection\r\n"
    );
    // A line long enough never to end is consumed, not buffered.
    let long = vec![b'z'; 10_000];
    let o = drive_with(&c, &[&long, &long], accept_all);
    assert_eq!(o.left, 0);
}

#[test]
fn text_line_too_long() {
    let mut input = b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&b"a".repeat(998));
    input.extend_from_slice(b"\r\n.");
    input.extend_from_slice(&b"b".repeat(997)); // 1000 on the wire: fine
    input.extend_from_slice(b"\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n");
    input.extend_from_slice(&b"c".repeat(999));
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let o = drive(&cfg(), &input);
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0].len(), 998 + 2 + 997 + 2);
    assert_eq!(o.aborted, 1);
    assert!(o
        .output
        .contains("500 5.5.2 Line too long in message\r\n221"));
    // Same result for a handful of split points (the full sweep is in other tests).
    for k in [0, 1, 50, 1000, 1050, 2051, input.len() - 3] {
        assert_eq!(
            drive_with(&cfg(), &[&input[..k], &input[k..]], accept_all),
            o,
            "split {k}"
        );
    }
}

#[test]
fn bdat_chunks() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n\
        BDAT 7\r\nb\r\n.\r\n\rBDAT 0\r\nBDAT 3 LAST\r\n\nyzQUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    // A CR ending one chunk is completed by the LF starting a later one.
    assert_eq!(o.messages, vec![b"b\r\n.\r\n\r\nyz".to_vec()]);
    assert_eq!(o.data_starts, 1);
    assert!(o.output.ends_with(
        "250 2.1.5 Recipient ok\r\n250 2.0.0 7 octets received\r\n250 2.0.0 7 octets received\r\n\
         250 2.0.0 ok q1\r\n221 2.0.0 mx.example closing connection\r\n"
    ));
}

/// BDAT octets are held to DATA's rules: a bare CR or LF anywhere (SMTP smuggling through a
/// chunk, e.g. `\r.\r`) refuses the message, and a CR left open by the last chunk is bare too.
#[test]
fn bdat_bare_cr_lf_refused() {
    for body in [
        &b"a\r.\r\nb\r\n"[..],
        b"a\n.\nb\r\n",
        b"a\r\n.\rb\r\n",
        b"ab\r\n\r",
    ] {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n".to_vec();
        input.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        input.extend_from_slice(body);
        input.extend_from_slice(b"MAIL FROM:<a@b.c>\r\nQUIT\r\n");
        let o = drive_all_splits(&cfg(), &input, accept_all);
        assert!(o.messages.is_empty(), "{body:?}");
        assert_eq!(o.aborted, 1, "{body:?}");
        assert!(
            o.output.ends_with(
                "550 5.6.11 bare CR or LF in message refused\r\n250 2.1.0 Sender ok\r\n\
                 221 2.0.0 mx.example closing connection\r\n"
            ),
            "{body:?}: {}",
            o.output
        );
    }
    // Split over two chunks, the first one's bare LF is refused when that chunk completes.
    let input =
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nBDAT 3\r\na\n.BDAT 2 LAST\r\n\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert!(o.messages.is_empty());
    assert!(
        o.output.contains("550 5.6.11 bare CR or LF"),
        "{}",
        o.output
    );
}

#[test]
fn bdat_zero_last_and_sequence_errors() {
    let input = b"EHLO c\r\nBDAT 6\r\nQUIT\r\nMAIL FROM:<a@b.c>\r\nBDAT 6 LAST\r\nRSET\r\nRCPT TO:<x@y.z>\r\n\
        BDAT 0 LAST\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nBDAT 2\r\nhiDATA\r\nRCPT TO:<z@y.z>\r\nBDAT 0 LAST\r\nQUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    // The refused chunks are read and dropped: their "QUIT" and "RSET" are not commands.
    assert_eq!(o.messages, vec![Vec::new(), b"hi".to_vec()]);
    assert_eq!(o.data_starts, 2);
    let expect_tail = "503 5.5.1 Need MAIL command\r\n\
        250 2.1.0 Sender ok\r\n\
        554 5.5.1 No valid recipients\r\n\
        250 2.1.5 Recipient ok\r\n\
        250 2.0.0 ok q1\r\n\
        250 2.1.0 Sender ok\r\n\
        250 2.1.5 Recipient ok\r\n\
        250 2.0.0 2 octets received\r\n\
        503 5.5.1 DATA not allowed after BDAT\r\n\
        503 5.5.1 RCPT not allowed during BDAT\r\n\
        250 2.0.0 ok q2\r\n\
        221 2.0.0 mx.example closing connection\r\n";
    assert!(o.output.ends_with(expect_tail), "{}", o.output);
}

#[test]
fn bdat_size_limit_and_disabled() {
    let mut c = cfg();
    c.max_message_size = 10;
    let input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nBDAT 8\r\n12345678BDAT 8 LAST\r\n12345678NOOP\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    assert_eq!(o.aborted, 1);
    assert!(o.messages.is_empty());
    assert!(o.output.ends_with(
        "250 2.0.0 8 octets received\r\n552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 ok\r\n"
    ));
    c.chunking = false;
    let o = drive(&c, b"EHLO c\r\nBDAT 1 LAST\r\n");
    assert!(!o.output.contains("CHUNKING"));
    assert!(o.output.ends_with("502 5.5.1 Command not implemented\r\n"));
}

#[test]
fn too_many_recipients() {
    let mut c = cfg();
    c.max_recipients = 2;
    let input = b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<1@y.z>\r\nRCPT TO:<2@y.z>\r\nRCPT TO:<3@y.z>\r\nDATA\r\n.\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    assert_eq!(o.rcpts, vec!["1@y.z", "2@y.z"]);
    assert!(o
        .output
        .contains("250 2.1.5 Recipient ok\r\n452 4.5.3 Too many recipients\r\n354"));
    assert_eq!(o.messages.len(), 1);
}

#[test]
fn bad_command_cap() {
    let mut input = Vec::new();
    for _ in 0..9 {
        input.extend_from_slice(b"FOO\r\n");
    }
    input.extend_from_slice(b"NOOP\r\nBAR\r\nNOOP\r\n");
    let o = drive_all_splits(&cfg(), &input, accept_all);
    assert!(o.closed);
    assert_eq!(
        o.output.matches("500 5.5.1 Command unrecognized").count(),
        10
    );
    assert!(o.output.ends_with(
        "500 5.5.1 Command unrecognized\r\n421 4.7.0 mx.example Too many errors, closing connection\r\n"
    ));
    assert_eq!(o.left, b"NOOP\r\n".len());
}

#[test]
fn sequence_errors() {
    let input = b"MAIL FROM:<a@b.c>\r\nHELO c\r\nRCPT TO:<x@y.z>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\n\
        MAIL FROM:<a@b.c>\r\nDATA\r\nRSET\r\nDATA\r\nRSET x\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(
        o.output,
        "220 mx.example ESMTP\r\n\
         503 5.5.1 Send HELO/EHLO first\r\n\
         250 mx.example\r\n\
         503 5.5.1 Need MAIL before RCPT\r\n\
         503 5.5.1 Need MAIL command\r\n\
         250 2.1.0 Sender ok\r\n\
         503 5.5.1 Nested MAIL command\r\n\
         554 5.5.1 No valid recipients\r\n\
         250 2.0.0 ok\r\n\
         503 5.5.1 Need MAIL command\r\n\
         501 5.5.4 Syntax error: no parameters allowed\r\n"
    );
}

#[test]
fn syntax_errors_and_parameters() {
    let input = "EHLO c\r\nMAIL FROM:a@b.c\r\nMAIL FROM:<a@b.c> FOO=1\r\nMAIL FROM:<a..b@c.d>\r\n\
        MAIL FROM:<ö@b.c>\r\nMAIL FROM:<ö@b.c> SMTPUTF8\r\nRCPT TO:<x@y.z> NOTIFY=NEVER\r\n\
        RCPT TO:<ü@y.z>\r\nRCPT TO:<x@-y.z>\r\n";
    let o = drive_all_splits(&cfg(), input.as_bytes(), accept_all);
    let tail = "501 5.1.7 Bad sender address syntax: path must be enclosed in <>\r\n\
        555 5.5.4 Unsupported parameter\r\n\
        501 5.1.7 Bad sender address syntax: bad local part\r\n\
        553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n\
        250 2.1.0 Sender ok\r\n\
        555 5.5.4 Unsupported parameter\r\n\
        250 2.1.5 Recipient ok\r\n\
        501 5.1.3 Bad recipient address syntax: bad domain\r\n";
    assert!(o.output.ends_with(tail), "{}", o.output);
    assert_eq!(o.rcpts, vec!["ü@y.z"]);
    // Without SMTPUTF8 on MAIL, a UTF-8 recipient is refused.
    let o = drive(
        &cfg(),
        "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<ü@y.z>\r\n".as_bytes(),
    );
    assert!(o
        .output
        .ends_with("553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"));
    // Commands must end in CRLF.
    let o = drive(&cfg(), b"NOOP\nNOOP\rx\r\nNOOP\r\n");
    assert!(o.output.ends_with(
        "500 5.5.2 Syntax error: bare LF in command\r\n500 5.5.2 Syntax error: bare CR in command\r\n250 2.0.0 ok\r\n"
    ));
}

#[test]
fn rejected_sender_and_recipients() {
    fn policy(ev: &Event<'_>) -> Decision {
        match ev {
            Event::Mail { from, .. } if from.to_string().starts_with("spam") => {
                Decision::Reject(Reply::new(553, Some((5, 7, 1)), "go away"))
            }
            Event::Rcpt { to, .. } if to.to_string().starts_with("nobody") => {
                Decision::Reject(Reply::new(550, Some((5, 1, 1)), "no mailbox here"))
            }
            _ => Decision::Accept,
        }
    }
    let input = b"EHLO c\r\nMAIL FROM:<spam@x.y>\r\nRCPT TO:<a@b.c>\r\nMAIL FROM:<ok@x.y>\r\n\
        RCPT TO:<nobody@b.c>\r\nDATA\r\nRCPT TO:<a@b.c>\r\nDATA\r\nx\r\n.\r\n";
    let o = drive_all_splits(&cfg(), input, policy);
    assert!(o.output.ends_with(
        "553 5.7.1 go away\r\n503 5.5.1 Need MAIL before RCPT\r\n250 2.1.0 Sender ok\r\n\
         550 5.1.1 no mailbox here\r\n554 5.5.1 No valid recipients\r\n250 2.1.5 Recipient ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 ok q1\r\n"
    ));
    assert_eq!(o.messages, vec![b"x\r\n".to_vec()]);
}

#[test]
fn misc_commands() {
    let input = b"NOOP\r\nHELP\r\nVRFY bob\r\nEXPN list\r\nSTARTTLS\r\nQUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(
        o.output,
        "220 mx.example ESMTP\r\n250 2.0.0 ok\r\n\
         214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT\r\n\
         214 2.0.0 See RFC 5321\r\n\
         252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n\
         502 5.5.1 Command not implemented\r\n502 5.5.1 Command not implemented\r\n\
         221 2.0.0 mx.example closing connection\r\n"
    );
    let mut c = cfg();
    c.vrfy_enabled = false;
    let o = drive(&c, b"VRFY bob\r\n");
    assert!(o.output.ends_with("502 5.5.1 VRFY disabled\r\n"));
}

#[test]
fn ehlo_capabilities_and_extension_point() {
    let mut c = cfg();
    c.max_message_size = 10_485_760;
    c.smtputf8 = false;
    c.chunking = false;
    c.pipelining = false;
    c.extra_ehlo = vec!["STARTTLS".into(), "AUTH LOGIN PLAIN".into()];
    c.greeting = "mx.example ESMTP indimail".into();
    let o = drive(&c, b"EHLO c\r\n");
    assert_eq!(
        o.output,
        "220 mx.example ESMTP indimail\r\n250-mx.example\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250 HELP\r\n"
    );
}

#[test]
fn protocol_names() {
    let mut s = Session::new(Rc::new(cfg()));
    assert_eq!(s.protocol(), "SMTP");
    let (_, ev) = s.feed(b"EHLO c\r\nMAIL FROM:<a@b.c> SMTPUTF8\r\n");
    assert!(matches!(ev, Event::Mail { .. }));
    assert_eq!(s.protocol(), "ESMTP");
    s.decide(Decision::Accept);
    assert_eq!(s.protocol(), "UTF8ESMTP");
    s.set_tls(true);
    s.set_authenticated(true);
    assert_eq!(s.protocol(), "UTF8ESMTPSA");
    assert!(s.envelope().esmtp);
    assert_eq!(s.envelope().helo.as_deref(), Some("c"));
    // decide() and message_committed() without a pending question change nothing.
    s.decide(Decision::Accept);
    s.message_committed(Ok("x".into()));
    assert!(!String::from_utf8_lossy(s.output()).contains("ok x"));
}

#[test]
fn output_consumption() {
    let mut s = Session::new(Rc::new(cfg()));
    s.greet();
    assert_eq!(s.output(), b"220 mx.example ESMTP\r\n");
    s.consume_output(4);
    assert_eq!(s.output(), b"mx.example ESMTP\r\n");
    s.consume_output(1000);
    assert!(s.output().is_empty());
}

// ---- STARTTLS (RFC 3207) ----

fn tls_cfg() -> SessionConfig {
    let mut c = cfg();
    c.starttls = true;
    c.chunking = false;
    c.smtputf8 = false;
    c
}

/// Runs `plain` (ending with the STARTTLS line) and then `secure` (the decrypted stream after
/// the handshake), each split at every byte and fed a byte at a time; all runs must agree.
fn drive_tls_all_splits(cfg: &SessionConfig, plain: &[u8], secure: &[u8]) -> Outcome {
    let whole = drive_with(cfg, &[plain, secure], accept_all);
    for k in 0..=plain.len() {
        let o = drive_with(cfg, &[&plain[..k], &plain[k..], secure], accept_all);
        assert_eq!(o, whole, "plain split at {k}");
    }
    for k in 0..=secure.len() {
        let o = drive_with(cfg, &[plain, &secure[..k], &secure[k..]], accept_all);
        assert_eq!(o, whole, "secure split at {k}");
    }
    let mut bytes: Vec<&[u8]> = plain.chunks(1).collect();
    bytes.extend(secure.chunks(1));
    assert_eq!(drive_with(cfg, &bytes, accept_all), whole, "byte at a time");
    whole
}

const TLS_EHLO: &str = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n\
    250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 HELP\r\n";
const TLS_EHLO_AFTER: &str = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n\
    250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n";

#[test]
fn starttls_transcript_split_everywhere() {
    let plain = b"EHLO client.example\r\nSTARTTLS\r\n";
    let secure = b"EHLO client.example\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n\
        DATA\r\nhi\r\n.\r\nQUIT\r\n";
    let o = drive_tls_all_splits(&tls_cfg(), plain, secure);
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n{TLS_EHLO}220 2.0.0 Ready to start TLS\r\n{TLS_EHLO_AFTER}\
             250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 ok q1\r\n\
             221 2.0.0 mx.example closing connection\r\n"
        )
    );
    assert_eq!(o.starttls, 1);
    assert_eq!(o.messages, vec![b"hi\r\n".to_vec()]);
    assert_eq!(o.protocol, "ESMTPS");
}

/// CVE-2011-0411: commands pipelined after STARTTLS in the same packet are never executed,
/// wherever the packet boundary fell before the STARTTLS line ended.
#[test]
fn starttls_pipelined_plaintext_is_discarded() {
    let packet = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@e.example>\r\nRCPT TO:<victim@y.z>\r\n";
    let end_of_starttls = b"EHLO c\r\nSTARTTLS\r\n".len();
    // After the handshake the client has not said EHLO: MAIL must be refused, proving the
    // pre-TLS EHLO was forgotten too.
    let secure = b"MAIL FROM:<a@b.c>\r\nEHLO c\r\nNOOP\r\n";
    for k in 0..end_of_starttls {
        let o = drive_with(
            &tls_cfg(),
            &[&packet[..k], &packet[k..], secure],
            accept_all,
        );
        assert!(o.mails.is_empty(), "split {k}: {:?}", o.mails);
        assert!(o.rcpts.is_empty(), "split {k}");
        assert_eq!(o.starttls, 1);
        assert_eq!(
            o.output,
            format!(
                "220 mx.example ESMTP\r\n{TLS_EHLO}220 2.0.0 Ready to start TLS\r\n\
                 503 5.5.1 Send HELO/EHLO first\r\n{TLS_EHLO_AFTER}250 2.0.0 ok\r\n"
            ),
            "split {k}"
        );
        assert_eq!(o.left, 0);
    }
    // Feeding plaintext while the handshake runs consumes it all, unprocessed.
    let mut s = Session::new(Rc::new(tls_cfg()));
    assert_eq!(s.feed(b"STARTTLS\r\nQUIT\r\n"), (16, Event::StartTls));
    assert!(s.is_paused());
    assert_eq!(s.feed(b"QUIT\r\n"), (6, Event::StartTls));
    assert!(!String::from_utf8_lossy(s.output()).contains("221"));
    s.tls_started();
    assert!(!s.is_paused());
    assert!(s.is_tls());
}

#[test]
fn starttls_refusals() {
    // Not enabled: as before, not implemented.
    let o = drive_all_splits(&cfg(), b"EHLO c\r\nSTARTTLS\r\n", accept_all);
    assert!(o
        .output
        .ends_with("\r\n502 5.5.1 Command not implemented\r\n"));
    assert!(!o.output.contains("STARTTLS"));
    // Parameters.
    let o = drive_all_splits(&tls_cfg(), b"STARTTLS now\r\n", accept_all);
    assert!(o
        .output
        .ends_with("501 5.5.4 Syntax error: no parameters allowed\r\n"));
    assert_eq!(o.starttls, 0);
    // A second STARTTLS inside TLS.
    let o = drive_tls_all_splits(
        &tls_cfg(),
        b"STARTTLS\r\n",
        b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n",
    );
    assert_eq!(o.starttls, 1);
    assert!(o.output.ends_with(&format!(
        "{TLS_EHLO_AFTER}503 5.5.1 TLS already active\r\n250 2.0.0 ok\r\n"
    )));
    // SMTPS: TLS from the start, STARTTLS neither offered nor accepted.
    let mut s = Session::new(Rc::new(tls_cfg()));
    s.set_tls(true);
    let (_, ev) = s.feed(b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(ev, Event::NeedMore);
    let out = String::from_utf8_lossy(s.output()).to_string();
    assert_eq!(
        out,
        format!("{TLS_EHLO_AFTER}503 5.5.1 TLS already active\r\n")
    );
    assert_eq!(s.protocol(), "ESMTPS");
    // tls_started without a pending STARTTLS changes nothing.
    let mut s = Session::new(Rc::new(tls_cfg()));
    s.tls_started();
    assert!(!s.is_tls());
}

// ---- AUTH (RFC 4954) ----

fn auth_cfg() -> SessionConfig {
    let mut c = tls_cfg();
    c.starttls = false;
    c.auth_mechanisms = vec!["LOGIN".into(), "PLAIN".into(), "CRAM-MD5".into()];
    c.auth_plain_needs_tls = false;
    c
}

const AUTH_EHLO: &str = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n\
    250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN PLAIN CRAM-MD5\r\n250 HELP\r\n";

fn b64(s: &[u8]) -> String {
    crate::auth::encode(s)
}

#[test]
fn auth_plain_with_initial_response() {
    let input = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@b.c>\r\nQUIT\r\n";
    let o = drive_all_splits(&auth_cfg(), input, accept_all);
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n{AUTH_EHLO}235 2.7.0 Authentication successful\r\n\
             250 2.1.0 Sender ok\r\n221 2.0.0 mx.example closing connection\r\n"
        )
    );
    assert_eq!(o.auths, vec!["PLAIN alice"]);
    assert_eq!(o.auth_user.as_deref(), Some("alice"));
    assert_eq!(o.protocol, "ESMTPA");
}

#[test]
fn auth_plain_without_initial_response_and_authzid() {
    let resp = b64(b"admin\0alice\0secret");
    let input = format!("EHLO c\r\nAUTH PLAIN\r\n{resp}\r\nNOOP\r\n");
    let o = drive_all_splits(&auth_cfg(), input.as_bytes(), accept_all);
    assert!(o
        .output
        .ends_with("\r\n334 \r\n235 2.7.0 Authentication successful\r\n250 2.0.0 ok\r\n"));
    assert_eq!(o.auths, vec!["PLAIN alice admin"]);
    // "=" is an empty initial response: not a valid PLAIN message.
    let o = drive_all_splits(&auth_cfg(), b"EHLO c\r\nAUTH PLAIN =\r\n", accept_all);
    assert!(o
        .output
        .ends_with("501 5.5.2 Malformed authentication response\r\n"));
    assert!(o.auths.is_empty());
}

#[test]
fn auth_login_transcript() {
    let input = b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nAUTH LOGIN\r\n";
    let o = drive_all_splits(&auth_cfg(), input, accept_all);
    assert!(o.output.ends_with(
        "\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n\
         503 5.5.1 Already authenticated\r\n"
    ));
    assert_eq!(o.auths, vec!["LOGIN alice"]);
    // With the user name as initial response.
    let input = b"EHLO c\r\nAUTH LOGIN YWxpY2U=\r\nd3Jvbmc=\r\n";
    let o = drive_all_splits(&auth_cfg(), input, accept_all);
    assert!(o
        .output
        .ends_with("\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n"));
    assert_eq!(o.auth_user, None);
    assert_eq!(o.protocol, "ESMTP");
}

/// RFC 2195 section 2's example, byte for byte.
#[test]
fn auth_cram_md5_rfc2195_example() {
    let mut c = auth_cfg();
    c.hostname = "postoffice.reston.mci.net".into();
    c.greeting = "postoffice.reston.mci.net ESMTP".into();
    let input = b"EHLO c\r\nAUTH CRAM-MD5\r\ndGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    assert!(o.output.ends_with(
        "\r\n334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n\
         235 2.7.0 Authentication successful\r\n"
    ));
    assert_eq!(o.auths, vec!["CRAM-MD5 tim"]);
    // Each later challenge of the session differs.
    let mut s = Session::new(Rc::new(c));
    s.set_auth_entropy(1896, 697_170_952);
    let mut seen = std::collections::HashSet::new();
    s.feed(b"EHLO c\r\n");
    for _ in 0..20 {
        s.consume_output(usize::MAX);
        assert_eq!(s.feed(b"AUTH CRAM-MD5\r\n*\r\n").1, Event::NeedMore);
        let out = String::from_utf8_lossy(s.output()).to_string();
        let challenge = out.lines().next().unwrap().to_string();
        assert!(challenge.starts_with("334 "), "{out}");
        assert!(seen.insert(challenge));
    }
    // CRAM takes no initial response.
    let o = drive(&auth_cfg(), b"EHLO c\r\nAUTH CRAM-MD5 abc\r\n");
    assert!(o
        .output
        .ends_with("501 5.5.4 Syntax error: no initial response allowed with this mechanism\r\n"));
}

#[test]
fn auth_cancel_and_bad_base64() {
    let input = b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\n\
        AUTH LOGIN\r\nYWxp Y2U=\r\nAUTH LOGIN\r\n=\r\nNOOP\r\n";
    let o = drive_all_splits(&auth_cfg(), input, accept_all);
    assert!(o.output.ends_with(
        "\r\n334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n\
         334 \r\n501 5.0.0 Authentication cancelled\r\n\
         501 5.5.2 Cannot decode response\r\n\
         334 VXNlcm5hbWU6\r\n501 5.5.2 Cannot decode response\r\n\
         334 VXNlcm5hbWU6\r\n501 5.5.2 Malformed authentication response\r\n\
         250 2.0.0 ok\r\n"
    ));
    assert!(o.auths.is_empty());
    // A response line must end in CRLF too.
    let o = drive(&auth_cfg(), b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\nNOOP\r\n");
    assert!(o.output.ends_with(
        "334 VXNlcm5hbWU6\r\n501 5.5.2 Syntax error: bare LF in response\r\n250 2.0.0 ok\r\n"
    ));
}

#[test]
fn auth_failures_close_the_connection() {
    let bad = b64(b"\0alice\0wrong");
    let down = b64(b"\0alice\0down");
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {down}\r\nAUTH PLAIN {bad}\r\n\
         AUTH PLAIN {bad}\r\nNOOP\r\n"
    );
    let o = drive_all_splits(&auth_cfg(), input.as_bytes(), accept_all);
    assert!(o.output.ends_with(
        "\r\n535 5.7.8 Authentication credentials invalid\r\n\
         454 4.7.0 Temporary authentication failure\r\n\
         535 5.7.8 Authentication credentials invalid\r\n\
         535 5.7.8 Authentication credentials invalid\r\n\
         421 4.7.0 mx.example Too many authentication failures, closing connection\r\n"
    ));
    assert!(o.closed);
    assert_eq!(o.auths.len(), 4);
    assert!(o.left > 0, "the NOOP is never read");
}

#[test]
fn auth_sequence_errors() {
    let mut c = auth_cfg();
    c.auth_mechanisms.push("SCRAM-SHA-256".into());
    let input = b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nEHLO c\r\nAUTH DIGEST-MD5\r\n\
        MAIL FROM:<a@b.c>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nRSET\r\n\
        AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    assert!(o
        .output
        .starts_with("220 mx.example ESMTP\r\n503 5.5.1 Send EHLO first\r\n"));
    // SCRAM needs no TLS: advertised in clear text too.
    assert!(o
        .output
        .contains("250-AUTH LOGIN PLAIN CRAM-MD5 SCRAM-SHA-256\r\n"));
    assert!(o.output.ends_with(
        "504 5.5.4 Unrecognized authentication type\r\n250 2.1.0 Sender ok\r\n\
         503 5.5.1 AUTH not permitted during a mail transaction\r\n250 2.0.0 ok\r\n\
         235 2.7.0 Authentication successful\r\n"
    ));
    // AUTH off: not implemented, as before.
    let o = drive(&cfg(), b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert!(o.output.ends_with("502 5.5.1 Command not implemented\r\n"));
    assert!(!o.output.contains("AUTH"));
}

#[test]
fn secure_auth_offers_plain_and_login_only_under_tls() {
    let mut c = auth_cfg();
    c.auth_plain_needs_tls = true;
    c.starttls = true;
    let plain = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH LOGIN\r\nSTARTTLS\r\n";
    let secure = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n";
    let o = drive_tls_all_splits(&c, plain, secure);
    let before = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-AUTH CRAM-MD5\r\n250 HELP\r\n";
    let refused = "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n{before}{refused}{refused}\
             220 2.0.0 Ready to start TLS\r\n{AUTH_EHLO}\
             235 2.7.0 Authentication successful\r\n"
        )
    );
    assert_eq!(o.protocol, "ESMTPSA");
    assert_eq!(o.auth_user.as_deref(), Some("alice"));
}

#[test]
fn starttls_forgets_authentication() {
    let mut c = auth_cfg();
    c.starttls = true;
    let o = drive_tls_all_splits(
        &c,
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTARTTLS\r\n",
        b"EHLO c\r\n",
    );
    assert_eq!(o.auths.len(), 1);
    assert_eq!(o.auth_user, None);
    assert_eq!(o.protocol, "ESMTPS");
}

#[test]
fn require_auth_submission() {
    let mut c = auth_cfg();
    c.require_auth = true;
    let input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n\
        AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@b.c>\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    assert!(o.output.ends_with(&format!(
        "{AUTH_EHLO}530 5.7.0 Authentication required\r\n503 5.5.1 Need MAIL before RCPT\r\n\
         235 2.7.0 Authentication successful\r\n250 2.1.0 Sender ok\r\n"
    )));
    assert_eq!(o.mails, vec!["a@b.c"]);
}

#[test]
fn require_tls_force_tls() {
    let mut c = auth_cfg();
    c.starttls = true;
    c.require_tls = true;
    c.require_auth = true;
    c.auth_plain_needs_tls = true;
    let plain =
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nAUTH CRAM-MD5\r\nNOOP\r\nSTARTTLS\r\n";
    let secure = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n\
        MAIL FROM:<a@b.c>\r\n";
    let o = drive_tls_all_splits(&c, plain, secure);
    let must = "530 5.7.0 Must issue a STARTTLS command first\r\n";
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n{TLS_EHLO}{must}{must}{must}250 2.0.0 ok\r\n\
             220 2.0.0 Ready to start TLS\r\n{AUTH_EHLO}\
             530 5.7.0 Authentication required\r\n235 2.7.0 Authentication successful\r\n\
             250 2.1.0 Sender ok\r\n"
        )
    );
    assert_eq!(o.mails, vec!["a@b.c"]);
}

#[test]
fn auth_line_caps() {
    let mut c = auth_cfg();
    c.max_command_line = 64;
    c.max_auth_line = 1024;
    // An AUTH command longer than max_command_line but within max_auth_line is read whole.
    let mut long_user = "u".repeat(300);
    long_user.insert(0, '\0');
    long_user.push_str("\0secret");
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nNOOP\r\n",
        b64(long_user.as_bytes())
    );
    let o = drive_all_splits(&c, input.as_bytes(), accept_all);
    assert_eq!(o.auths, vec![format!("PLAIN {}", "u".repeat(300))]);
    assert!(o
        .output
        .ends_with("535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 ok\r\n"));
    // Other commands keep the short cap.
    let input = format!("EHLO c\r\nNOOP {}\r\nNOOP\r\n", "x".repeat(100));
    let o = drive_all_splits(&c, input.as_bytes(), accept_all);
    assert!(o
        .output
        .ends_with("500 5.5.2 Line too long\r\n250 2.0.0 ok\r\n"));
    // A response longer than max_auth_line ends the exchange; it is never buffered.
    let input = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\nNOOP\r\n", "A".repeat(3000));
    let o = drive_all_splits(&c, input.as_bytes(), accept_all);
    assert!(o.output.ends_with(
        "334 VXNlcm5hbWU6\r\n500 5.5.6 Authentication Exchange line is too long\r\n250 2.0.0 ok\r\n"
    ));
    assert!(o.auths.is_empty());
}

#[test]
fn secrets_never_in_debug_output() {
    let mut s = Session::new(Rc::new(auth_cfg()));
    let (_, ev) = s.feed(b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\naHVudGVyMg==\r\n");
    let Event::Auth { ref secret, .. } = ev else {
        panic!("{ev:?}");
    };
    assert_eq!(secret, &AuthSecret::Password("hunter2".into()));
    let shown = format!("{ev:?} {s:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
    // Pending: the same question again, nothing consumed.
    assert_eq!(s.feed(b"NOOP\r\n").0, 0);
    assert!(s.is_paused());
    s.auth_result(AuthOutcome::Ok);
    assert_eq!(s.envelope().auth_user.as_deref(), Some("alice"));
    assert_eq!(s.protocol(), "ESMTPA");
    // auth_result without a pending question changes nothing.
    s.auth_result(AuthOutcome::Failed);
    assert!(!String::from_utf8_lossy(s.output()).contains("535"));
}

// ---- SCRAM-SHA-256 (RFC 5802, RFC 7677) ----

/// RFC 7677 section 3's exchange: user "user", password "pencil".
const RFC7677_SECRET: &str = "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,\
    WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC7677_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// The SCRAM "directory": `user` and `disabled` hold RFC 7677's secret, `down` is a lookup
/// that fails for now, anyone else gets a decoy.
fn scram_directory(authcid: &str) -> Option<ScramCredentials> {
    match authcid {
        "user" | "disabled" => Some(ScramCredentials::parse(RFC7677_SECRET).unwrap()),
        "down" => None,
        other => Some(ScramCredentials::decoy(other, b"server key", 4096)),
    }
}

/// The client side for `n=<user>,r=rOprNGfwEbeRWgbNEkqO` against the RFC 7677 secret and
/// server nonce: client-final and the server-final to expect (RFC 5802 section 3).
fn scram_client_final(user: &str, password: &str) -> (String, String) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let hmac = |k: &[u8], d: &[u8]| -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).unwrap();
        m.update(d);
        m.finalize().into_bytes().to_vec()
    };
    let e = base64::engine::general_purpose::STANDARD;
    let salt = e.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, 4096, &mut salted);
    let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let auth_message =
        format!("n={user},r=rOprNGfwEbeRWgbNEkqO,{RFC7677_SERVER_FIRST},{without_proof}");
    let client_key = hmac(&salted, b"Client Key");
    let signature = hmac(&Sha256::digest(&client_key), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac(&salted, b"Server Key");
    (
        format!("{without_proof},p={}", e.encode(proof)),
        format!("v={}", e.encode(hmac(&server_key, auth_message.as_bytes()))),
    )
}

fn scram_cfg() -> SessionConfig {
    let mut c = auth_cfg();
    c.auth_mechanisms.push("SCRAM-SHA-256".into());
    c.auth_plain_needs_tls = true;
    c
}

#[test]
fn scram_rfc7677_exchange_split_everywhere() {
    let input = format!(
        "EHLO c\r\nAUTH SCRAM-SHA-256 {}\r\n{}\r\n\r\nMAIL FROM:<user@b.c>\r\n",
        b64(RFC7677_CLIENT_FIRST.as_bytes()),
        b64(RFC7677_CLIENT_FINAL.as_bytes())
    );
    let o = drive_all_splits(&scram_cfg(), input.as_bytes(), accept_all);
    // Offered in clear text, unlike PLAIN and LOGIN: no password crosses the wire.
    assert!(
        o.output.contains("250-AUTH CRAM-MD5 SCRAM-SHA-256\r\n"),
        "{}",
        o.output
    );
    assert!(
        o.output.ends_with(&format!(
            "334 {}\r\n334 {}\r\n235 2.7.0 Authentication successful\r\n250 2.1.0 Sender ok\r\n",
            b64(RFC7677_SERVER_FIRST.as_bytes()),
            b64(RFC7677_SERVER_FINAL.as_bytes())
        )),
        "{}",
        o.output
    );
    assert_eq!(o.auths, vec!["lookup user", "SCRAM-SHA-256 user"]);
    assert_eq!(o.auth_user.as_deref(), Some("user"));
    assert_eq!(o.protocol, "ESMTPA");

    // Without an initial response: an empty 334 first. "=" answers server-final too.
    let input = format!(
        "EHLO c\r\nAUTH SCRAM-SHA-256\r\n{}\r\n{}\r\n=\r\n",
        b64(RFC7677_CLIENT_FIRST.as_bytes()),
        b64(RFC7677_CLIENT_FINAL.as_bytes())
    );
    let o = drive_all_splits(&scram_cfg(), input.as_bytes(), accept_all);
    assert!(o.output.contains("\r\n334 \r\n334 "), "{}", o.output);
    assert!(o
        .output
        .ends_with("235 2.7.0 Authentication successful\r\n"));
}

/// Runs one SCRAM exchange for `user` whose client-final is `client_final`, then `after`
/// and NOOP.
fn scram_run(user: &str, client_final: &str, after: &str) -> Outcome {
    let first = format!("n,,n={user},r=rOprNGfwEbeRWgbNEkqO");
    let input = format!(
        "EHLO c\r\nAUTH SCRAM-SHA-256 {}\r\n{}\r\n{after}NOOP\r\n",
        b64(first.as_bytes()),
        b64(client_final.as_bytes())
    );
    drive_all_splits(&scram_cfg(), input.as_bytes(), accept_all)
}

#[test]
fn scram_failures_are_535_and_do_not_reveal_the_user() {
    const FAILED: &str = "535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 ok\r\n";
    let server_first = format!("334 {}\r\n", b64(RFC7677_SERVER_FIRST.as_bytes()));
    // A wrong password: a different proof. No server-final, 535, counted by the driver.
    let wrong = RFC7677_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
    let o = scram_run("user", &wrong, "");
    assert!(
        o.output.ends_with(&format!("{server_first}{FAILED}")),
        "{}",
        o.output
    );
    assert_eq!(o.auths, vec!["lookup user", "SCRAM-SHA-256 user"]);
    assert_eq!(o.auth_user, None);
    // An unknown user runs the same exchange against a decoy and fails the same way; the
    // decoy's salt is stable, as a real one would be.
    let o = scram_run("ghost", RFC7677_CLIENT_FINAL, "");
    assert!(o.output.ends_with(FAILED), "{}", o.output);
    let nonce = b64(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=");
    assert!(
        o.output
            .contains(&format!("334 {}", &nonce[..nonce.len() - 4])),
        "{}",
        o.output
    );
    assert_eq!(o.auths, vec!["lookup ghost", "SCRAM-SHA-256 ghost"]);
    assert_eq!(
        scram_run("ghost", RFC7677_CLIENT_FINAL, "").output,
        o.output
    );
    // The right proof but another nonce (a replayed client-final): 535.
    let replay = RFC7677_CLIENT_FINAL.replace("k0,p=", "k1,p=");
    let o = scram_run("user", &replay, "");
    assert!(o.output.ends_with(FAILED), "{}", o.output);
    // c= that is not the gs2 header (here "y,,"), even with the right proof: 535.
    let cb = RFC7677_CLIENT_FINAL.replace("c=biws", "c=eSws");
    let o = scram_run("user", &cb, "");
    assert!(o.output.ends_with(FAILED), "{}", o.output);
    // A good proof for an account the driver refuses: server-final, then 535.
    let (fin, server_final) = scram_client_final("disabled", "pencil");
    let o = scram_run("disabled", &fin, "\r\n");
    assert!(
        o.output
            .ends_with(&format!("334 {}\r\n{FAILED}", b64(server_final.as_bytes()))),
        "{}",
        o.output
    );
    // Failures count towards max_auth_failures like any other mechanism's.
    let bad = b64(wrong.as_bytes());
    let first = b64(RFC7677_CLIENT_FIRST.as_bytes());
    let input = format!(
        "EHLO c\r\n{}",
        format!("AUTH SCRAM-SHA-256 {first}\r\n{bad}\r\n").repeat(3)
    );
    let o = drive_all_splits(&scram_cfg(), input.as_bytes(), accept_all);
    assert!(o.closed);
    assert!(o
        .output
        .ends_with("Too many authentication failures, closing connection\r\n"));
}

#[test]
fn scram_malformed_messages_and_cancels() {
    let first = b64(RFC7677_CLIENT_FIRST.as_bytes());
    let fin = b64(RFC7677_CLIENT_FINAL.as_bytes());
    let server_first = format!("334 {}\r\n", b64(RFC7677_SERVER_FIRST.as_bytes()));
    let cases: Vec<(String, String)> = vec![
        // Client-first: bad base64, missing attributes, channel binding asked for, cancel.
        (
            "AUTH SCRAM-SHA-256 !!!!\r\n".into(),
            "501 5.5.2 Cannot decode response\r\n".into(),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"n,,n=user")),
            "501 5.5.2 Malformed authentication response\r\n".into(),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"n,,r=abc")),
            "501 5.5.2 Malformed authentication response\r\n".into(),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"x,,n=user,r=abc")),
            "501 5.5.2 Malformed authentication response\r\n".into(),
        ),
        (
            format!(
                "AUTH SCRAM-SHA-256 {}\r\n",
                b64(b"p=tls-exporter,,n=user,r=abc")
            ),
            "501 5.5.4 Channel binding not supported (no -PLUS mechanism is offered)\r\n".into(),
        ),
        (
            "AUTH SCRAM-SHA-256 =\r\n".into(),
            "501 5.5.2 Malformed authentication response\r\n".into(),
        ),
        (
            "AUTH SCRAM-SHA-256\r\n*\r\n".into(),
            "334 \r\n501 5.0.0 Authentication cancelled\r\n".into(),
        ),
        // Client-final: cancel, bad base64, missing proof.
        (
            format!("AUTH SCRAM-SHA-256 {first}\r\n*\r\n"),
            format!("{server_first}501 5.0.0 Authentication cancelled\r\n"),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {first}\r\nc=biws\r\n"),
            format!("{server_first}501 5.5.2 Cannot decode response\r\n"),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {first}\r\n{}\r\n", b64(b"c=biws,r=x")),
            format!("{server_first}501 5.5.2 Malformed authentication response\r\n"),
        ),
        // Server-final acknowledged with something else, or cancelled: not authenticated.
        (
            format!("AUTH SCRAM-SHA-256 {first}\r\n{fin}\r\n*\r\n"),
            format!(
                "{server_first}334 {}\r\n501 5.0.0 Authentication cancelled\r\n",
                b64(RFC7677_SERVER_FINAL.as_bytes())
            ),
        ),
        (
            format!("AUTH SCRAM-SHA-256 {first}\r\n{fin}\r\nYWJj\r\n"),
            format!(
                "{server_first}334 {}\r\n501 5.5.2 Malformed authentication response\r\n",
                b64(RFC7677_SERVER_FINAL.as_bytes())
            ),
        ),
        // The directory cannot answer: 454, nothing sent to the client about the user.
        (
            format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"n,,n=down,r=abc")),
            "454 4.7.0 Temporary authentication failure\r\n".into(),
        ),
    ];
    for (auth, reply) in cases {
        let input = format!("EHLO c\r\n{auth}NOOP\r\n");
        let o = drive_all_splits(&scram_cfg(), input.as_bytes(), accept_all);
        assert!(
            o.output.ends_with(&format!("{reply}250 2.0.0 ok\r\n")),
            "{auth:?}:\n{}",
            o.output
        );
        assert_eq!(o.auth_user, None, "{auth:?}");
    }
    // A bad server nonce from the driver is a temporary failure, not a panic.
    let mut s = Session::new(Rc::new(scram_cfg()));
    let input = format!("EHLO c\r\nAUTH SCRAM-SHA-256 {first}\r\n");
    let (_, ev) = s.feed(input.as_bytes());
    assert!(matches!(ev, Event::ScramLookup { ref authcid, .. } if authcid == "user"));
    s.consume_output(usize::MAX);
    s.scram_credentials(scram_directory("user"), "a,b");
    assert_eq!(
        s.output(),
        b"454 4.7.0 Temporary authentication failure\r\n"
    );
    // Answers without a pending lookup change nothing.
    s.consume_output(usize::MAX);
    s.scram_credentials(scram_directory("user"), "abc");
    assert!(s.output().is_empty());
}

#[test]
fn etrn_is_not_implemented_unless_enabled() {
    let o = drive(&cfg(), b"EHLO c\r\nETRN example.com\r\nQUIT\r\n");
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n{EHLO_REPLY}502 5.5.1 Command not implemented\r\n\
            221 2.0.0 mx.example closing connection\r\n"
        )
    );
    assert!(o.turns.is_empty());
}

#[test]
fn etrn_transcript_split_everywhere() {
    let mut c = cfg();
    c.etrn = true;
    let input = b"ETRN held.example\r\nEHLO c\r\nETRN\r\nETRN bad..name\r\n\
        ETRN held.example\r\nETRN @Sub.Example\r\nETRN #q1\r\nETRN other.example\r\n\
        MAIL FROM:<a@b.c>\r\nETRN held.example\r\nQUIT\r\n";
    let o = drive_all_splits(&c, input, accept_all);
    let ehlo = "250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n250-ETRN\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 HELP\r\n";
    assert_eq!(
        o.output,
        format!(
            "220 mx.example ESMTP\r\n\
            503 5.5.1 Send HELO/EHLO first\r\n\
            {ehlo}\
            501 5.5.4 Syntax error: ETRN needs a node name\r\n\
            501 5.5.4 Syntax error: bad node name\r\n\
            253 2.0.0 OK, 2 pending messages for node held.example started\r\n\
            553 5.7.1 etrn service rejected\r\n\
            553 5.7.1 etrn service rejected\r\n\
            553 5.7.1 etrn service rejected\r\n\
            250 2.1.0 Sender ok\r\n\
            503 5.5.1 ETRN not permitted during a mail transaction\r\n\
            221 2.0.0 mx.example closing connection\r\n"
        )
    );
    assert_eq!(
        o.turns,
        vec![
            r#"ETRN Domain("held.example")"#,
            r#"ETRN Subdomains("sub.example")"#,
            r#"ETRN Queue("q1")"#,
            r#"ETRN Domain("other.example")"#,
        ]
    );
}

fn odmr_cfg() -> SessionConfig {
    let mut c = cfg();
    c.odmr = true;
    c.atrn = true;
    c.etrn = true;
    c.auth_mechanisms = vec!["PLAIN".into()];
    c.auth_plain_needs_tls = false;
    c
}

#[test]
fn odmr_atrn_turns_the_connection_split_everywhere() {
    // RFC 2645 section 4: EHLO, AUTH, ATRN refused while no mail waits, then accepted; what
    // follows the ATRN line (the customer's 220 greeting) is left for the reverse session.
    let input = b"EHLO c\r\nATRN a.example\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n\
        VRFY bob\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nATRN a.example,,b\r\n\
        ATRN nomail.example\r\nATRN A.example,b.example\r\n220 customer.example ESMTP\r\n";
    let o = drive_all_splits(&odmr_cfg(), input, accept_all);
    assert_eq!(
        o.output,
        "220 mx.example ESMTP\r\n\
        250-mx.example\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN\r\n\
        250-ATRN\r\n250 HELP\r\n\
        530 5.7.0 Authentication required\r\n\
        502 5.5.1 Command not implemented\r\n\
        502 5.5.1 Command not implemented\r\n\
        502 5.5.1 Command not implemented\r\n\
        235 2.7.0 Authentication successful\r\n\
        501 5.5.4 Syntax error: bad domain in ATRN\r\n\
        453 4.3.0 No message waiting\r\n\
        250 2.0.0 OK now reversing the connection\r\n"
    );
    assert_eq!(
        o.turns,
        vec!["ATRN nomail.example", "ATRN a.example,b.example"]
    );
    assert!(o.turned);
    assert_eq!(o.left, b"220 customer.example ESMTP\r\n".len());
}

#[test]
fn atrn_is_not_implemented_outside_odmr() {
    let mut c = odmr_cfg();
    c.odmr = false;
    c.atrn = false;
    let o = drive(
        &c,
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nATRN a.example\r\nQUIT\r\n",
    );
    assert!(
        o.output
            .contains("\r\n502 5.5.1 Command not implemented\r\n"),
        "{}",
        o.output
    );
    assert!(!o.output.contains("ATRN"), "{}", o.output);
    assert!(o.turns.is_empty());
}

/// MAX_RCPT_ERRCOUNT: the third permanently refused RCPT closes the
/// connection with 421; temporary refusals do not count.
#[test]
fn too_many_invalid_recipients_close() {
    let mut s = Session::new(Rc::new(cfg()));
    s.set_max_rcpt_errors(3);
    let input: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@y.z>\r\nRCPT TO:<b@y.z>\r\nRCPT TO:<c@y.z>\r\nRCPT TO:<d@y.z>\r\nRCPT TO:<e@y.z>\r\n";
    let mut pos = 0;
    let (n, ev) = s.feed(input);
    pos += n;
    assert!(matches!(ev, Event::Mail { .. }));
    s.decide(Decision::Accept);
    let answers = [
        (451, (4, 2, 0)),
        (550, (5, 1, 1)),
        (550, (5, 1, 1)),
        (553, (5, 7, 1)),
    ];
    for (code, enh) in answers {
        let (n, ev) = s.feed(&input[pos..]);
        pos += n;
        assert!(matches!(ev, Event::Rcpt { .. }), "{ev:?}");
        s.decide(Decision::Reject(Reply::new(code, Some(enh), "no")));
    }
    assert_eq!(s.rcpt_errors(), 3);
    let (_, ev) = s.feed(&input[pos..]);
    assert_eq!(ev, Event::Close);
    assert!(String::from_utf8_lossy(s.output())
        .ends_with("553 5.7.1 no\r\n421 4.7.0 mx.example too many invalid addresses\r\n"));
}
