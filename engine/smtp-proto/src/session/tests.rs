//! Session tests: whole transcripts fed split at every byte, pipelining, smuggling, limits.

use super::*;
use crate::address::Mailbox;

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
}

type Policy = fn(&Event<'_>) -> Decision;

fn accept_all(_: &Event<'_>) -> Decision {
    Decision::Accept
}

/// A driver: feeds `pieces` one after the other, keeping the unconsumed tail as a real driver
/// would, accepting or rejecting per `policy`, committing every complete message.
fn drive_with(cfg: &SessionConfig, pieces: &[&[u8]], policy: Policy) -> Outcome {
    let mut s = Session::new(Rc::new(cfg.clone()));
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
            }
            buf.drain(..n);
            consumed += n;
            out.extend_from_slice(s.output());
            let len = s.output().len();
            s.consume_output(len);
            if o.closed {
                break 'pieces;
            }
            if stop {
                // The core never makes the driver hold more than one command line.
                if matches!(s.mode, Mode::ExpectCommand) {
                    assert!(
                        buf.len() < cfg.max_command_line.max(8),
                        "tail {}",
                        buf.len()
                    );
                } else {
                    assert!(buf.is_empty(), "tail in mode {:?}", s.mode);
                }
                break;
            }
        }
    }
    o.left = total - consumed;
    o.output = String::from_utf8(out).unwrap();
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
        BDAT 7\r\nab\n.\r\n\rBDAT 0\r\nBDAT 3 LAST\r\nxyzQUIT\r\n";
    let o = drive_all_splits(&cfg(), input, accept_all);
    assert_eq!(o.messages, vec![b"ab\n.\r\n\rxyz".to_vec()]);
    assert_eq!(o.data_starts, 1);
    assert!(o.output.ends_with(
        "250 2.1.5 Recipient ok\r\n250 2.0.0 7 octets received\r\n250 2.0.0 7 octets received\r\n\
         250 2.0.0 ok q1\r\n221 2.0.0 mx.example closing connection\r\n"
    ));
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
