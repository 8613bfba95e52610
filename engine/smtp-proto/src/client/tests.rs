//! Client tests: against the server core in-process (both peers over memory buffers), and
//! against scripted server transcripts split at every byte.

use std::rc::Rc;

use super::*;
use crate::{dot_stuff, Decision, Event, Session, SessionConfig};

type Policy = fn(&Event<'_>) -> Decision;

fn accept_all(_: &Event<'_>) -> Decision {
    Decision::Accept
}

/// What both ends saw.
#[derive(Debug, Default)]
struct Run {
    done: Vec<ClientEvent>,
    stored: Vec<Vec<u8>>,
    errors: Vec<ClientError>,
    client_closed: bool,
    server_closed: bool,
}

/// Runs a client delivering `messages` (envelope, body) to a server session, moving bytes
/// between them in memory until both are finished.
fn exchange(
    server_cfg: SessionConfig,
    client_cfg: ClientConfig,
    messages: Vec<(OutgoingMessage, Vec<u8>)>,
    policy: Policy,
    commit_fails: bool,
) -> Run {
    let mut server = Session::new(Rc::new(server_cfg));
    server.greet();
    let mut client = ClientSession::new(client_cfg);
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut queue: VecDeque<_> = messages.into();
    let mut body: Option<Vec<u8>> = None;
    let mut run = Run::default();
    let mut cur: Option<Vec<u8>> = None;
    for _round in 0..1000 {
        // Server side.
        loop {
            let (n, ev) = server.feed(&to_server);
            let mut stop = false;
            match ev {
                Event::NeedMore => stop = true,
                Event::Mail { .. } | Event::Rcpt { .. } => {
                    let d = policy(&ev);
                    server.decide(d);
                }
                Event::DataStart => cur = Some(Vec::new()),
                Event::Data(d) => cur.as_mut().unwrap().extend_from_slice(d),
                Event::MessageEnd => {
                    let m = cur.take().unwrap();
                    if commit_fails {
                        server.message_committed(Err(Reply::new(
                            451,
                            Some((4, 3, 0)),
                            "disk full",
                        )));
                    } else {
                        run.stored.push(m);
                        server.message_committed(Ok(format!("{}", run.stored.len())));
                    }
                }
                Event::StartTls
                | Event::Auth { .. }
                | Event::ScramLookup { .. }
                | Event::Etrn { .. }
                | Event::Atrn { .. }
                | Event::Turn => panic!("STARTTLS, AUTH, ETRN and ATRN are off here"),
                Event::MessageAborted => cur = None,
                Event::Close => {
                    run.server_closed = true;
                    stop = true;
                }
            }
            to_server.drain(..n);
            if stop {
                break;
            }
        }
        to_client.extend_from_slice(server.output());
        let l = server.output().len();
        server.consume_output(l);

        // Client side.
        loop {
            let (n, ev) = match client.feed(&to_client) {
                Ok(x) => x,
                Err(e) => {
                    run.errors.push(e);
                    to_server.extend_from_slice(client.output());
                    return run;
                }
            };
            to_client.drain(..n);
            let mut stop = false;
            match ev {
                ClientEvent::NeedReply => stop = true,
                ClientEvent::StartTls => client.tls_established().unwrap(),
                ClientEvent::Ready => match queue.pop_front() {
                    Some((msg, b)) => match client.send_mail(msg) {
                        Ok(()) => body = Some(b),
                        Err(e) => run.errors.push(e),
                    },
                    None => {
                        client.quit().unwrap();
                        stop = true;
                    }
                },
                ClientEvent::SendData => {
                    // Commands first, then the body.
                    to_server.extend_from_slice(client.output());
                    let l = client.output().len();
                    client.consume_output(l);
                    dot_stuff(&body.take().unwrap(), &mut to_server);
                    client.data_sent().unwrap();
                }
                ev @ ClientEvent::TransactionDone { .. } => run.done.push(ev),
                ClientEvent::Closed => {
                    run.client_closed = true;
                    return run;
                }
            }
            if stop {
                break;
            }
        }
        to_server.extend_from_slice(client.output());
        let l = client.output().len();
        client.consume_output(l);
    }
    panic!("no progress: {run:?}");
}

fn msg(to: &[&str]) -> OutgoingMessage {
    OutgoingMessage {
        from: "sender@a.example".into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        size: Some(20),
        eight_bit: false,
        smtputf8: false,
    }
}

fn delivered(ev: &ClientEvent) -> Vec<bool> {
    let ClientEvent::TransactionDone { per_rcpt, .. } = ev else {
        panic!("{ev:?}")
    };
    per_rcpt
        .iter()
        .map(|r| matches!(r.outcome, RcptOutcome::Delivered(_)))
        .collect()
}

fn reject_bad(ev: &Event<'_>) -> Decision {
    match ev {
        Event::Rcpt { to, .. } if to.to_string().starts_with("bad") => {
            Decision::Reject(Reply::new(550, Some((5, 1, 1)), "no such user"))
        }
        Event::Rcpt { to, .. } if to.to_string().starts_with("later") => {
            Decision::Reject(Reply::new(450, Some((4, 2, 1)), "try later"))
        }
        Event::Mail { from, .. } if from.to_string().starts_with("spam") => {
            Decision::Reject(Reply::new(553, Some((5, 7, 1)), "go away"))
        }
        _ => Decision::Accept,
    }
}

#[test]
fn delivers_with_pipelining_and_reuses_connection() {
    let body = b".leading dot\nline two\r\n".to_vec();
    let run = exchange(
        SessionConfig::new("mx.example"),
        ClientConfig::new("client.example"),
        vec![
            (msg(&["a@b.example", "c@d.example"]), body.clone()),
            (msg(&["e@f.example"]), b"second".to_vec()),
        ],
        accept_all,
        false,
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(run.done.len(), 2);
    assert_eq!(delivered(&run.done[0]), vec![true, true]);
    assert_eq!(delivered(&run.done[1]), vec![true]);
    assert_eq!(
        run.stored,
        vec![
            b".leading dot\r\nline two\r\n".to_vec(),
            b"second\r\n".to_vec()
        ]
    );
    assert!(run.client_closed && run.server_closed);
}

#[test]
fn per_recipient_results() {
    for pipelining in [true, false] {
        let mut cfg = SessionConfig::new("mx.example");
        cfg.pipelining = pipelining;
        let run = exchange(
            cfg,
            ClientConfig::new("client.example"),
            vec![
                (
                    msg(&["bad@x.example", "ok@x.example", "later@x.example"]),
                    b"hi".to_vec(),
                ),
                (
                    msg(&["bad@x.example", "later@x.example"]),
                    b"never".to_vec(),
                ),
                (msg(&["ok2@x.example"]), b"again".to_vec()),
            ],
            reject_bad,
            false,
        );
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(run.done.len(), 3);
        let ClientEvent::TransactionDone {
            per_rcpt,
            message_reply,
            mail_reply,
        } = &run.done[0]
        else {
            panic!()
        };
        assert_eq!(mail_reply.code(), 250);
        assert_eq!(message_reply.as_ref().map(Reply::code), Some(250));
        assert!(matches!(&per_rcpt[0].outcome, RcptOutcome::Failed(r) if r.code() == 550));
        assert!(matches!(&per_rcpt[1].outcome, RcptOutcome::Delivered(_)));
        assert!(matches!(&per_rcpt[2].outcome, RcptOutcome::Deferred(r) if r.code() == 450));
        assert_eq!(per_rcpt[2].rcpt_reply.as_ref().map(Reply::code), Some(450));
        // All recipients refused: no data sent, the connection is reset and reused.
        let ClientEvent::TransactionDone {
            message_reply,
            per_rcpt,
            ..
        } = &run.done[1]
        else {
            panic!()
        };
        assert_eq!(message_reply, &None);
        assert!(per_rcpt
            .iter()
            .all(|r| !matches!(r.outcome, RcptOutcome::Delivered(_))));
        assert_eq!(delivered(&run.done[2]), vec![true]);
        assert_eq!(run.stored, vec![b"hi\r\n".to_vec(), b"again\r\n".to_vec()]);
        assert!(run.client_closed);
    }
}

#[test]
fn sender_refused_and_message_refused() {
    let mut spam = msg(&["a@b.example", "c@b.example"]);
    spam.from = "spam@x.example".into();
    let run = exchange(
        SessionConfig::new("mx.example"),
        ClientConfig::new("client.example"),
        vec![
            (spam, b"x".to_vec()),
            (msg(&["a@b.example"]), b"y".to_vec()),
        ],
        reject_bad,
        true,
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    let ClientEvent::TransactionDone {
        mail_reply,
        per_rcpt,
        ..
    } = &run.done[0]
    else {
        panic!()
    };
    assert_eq!(mail_reply.code(), 553);
    assert!(per_rcpt
        .iter()
        .all(|r| matches!(&r.outcome, RcptOutcome::Failed(r) if r.code() == 553)));
    let ClientEvent::TransactionDone {
        message_reply,
        per_rcpt,
        ..
    } = &run.done[1]
    else {
        panic!()
    };
    assert_eq!(message_reply.as_ref().map(Reply::code), Some(451));
    assert!(matches!(&per_rcpt[0].outcome, RcptOutcome::Deferred(r) if r.code() == 451));
    assert!(run.client_closed);
}

#[test]
fn size_and_utf8_checked_before_sending() {
    let mut cfg = SessionConfig::new("mx.example");
    cfg.max_message_size = 10;
    cfg.smtputf8 = false;
    let mut big = msg(&["a@b.example"]);
    big.size = Some(11);
    let mut utf8 = msg(&["ü@b.example"]);
    utf8.size = None;
    let run = exchange(
        cfg,
        ClientConfig::new("client.example"),
        vec![(big, Vec::new()), (utf8, Vec::new())],
        accept_all,
        false,
    );
    assert_eq!(
        run.errors,
        vec![
            ClientError::MessageTooBig { size: 11, max: 10 },
            ClientError::SmtpUtf8NotOffered
        ]
    );
    assert!(run.done.is_empty());
    assert!(run.client_closed);
}

#[test]
fn smtputf8_and_params_sent_when_offered() {
    let mut m = msg(&["ü@b.example"]);
    m.eight_bit = true;
    let run = exchange(
        SessionConfig::new("mx.example"),
        ClientConfig::new("client.example"),
        vec![(m, "Grüße\r\n".as_bytes().to_vec())],
        |ev| match ev {
            Event::Mail { params, .. } => {
                assert!(params.smtputf8);
                assert_eq!(params.size, Some(20));
                assert_eq!(params.body, Some(crate::Body::EightBitMime));
                Decision::Accept
            }
            _ => Decision::Accept,
        },
        false,
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(delivered(&run.done[0]), vec![true]);
}

#[test]
fn starttls_required_but_refused() {
    // Our server core lists STARTTLS through extra_ehlo but answers it with 502 (TLS is the
    // driver's business): a client that requires TLS must give up, one that does not goes on.
    let mut cfg = SessionConfig::new("mx.example");
    cfg.extra_ehlo = vec!["STARTTLS".into()];
    let mut ccfg = ClientConfig::new("client.example");
    ccfg.require_tls = true;
    let run = exchange(
        cfg.clone(),
        ccfg,
        vec![(msg(&["a@b.example"]), b"x".to_vec())],
        accept_all,
        false,
    );
    assert!(matches!(&run.errors[..], [ClientError::TlsUnavailable(Some(r))] if r.code() == 502));
    let run = exchange(
        cfg,
        ClientConfig::new("client.example"),
        vec![(msg(&["a@b.example"]), b"x".to_vec())],
        accept_all,
        false,
    );
    assert!(run.errors.is_empty());
    assert_eq!(delivered(&run.done[0]), vec![true]);
}

#[test]
fn bad_addresses_refused_locally() {
    let mut c = ClientSession::new(ClientConfig::new("c"));
    let (_, ev) = c.feed(b"220 hi\r\n250 ok\r\n").unwrap();
    assert_eq!(ev, ClientEvent::Ready);
    for to in ["a@b>\r\nRSET", "a b@c", ""] {
        let mut m = msg(&[]);
        m.to = vec![to.into()];
        assert!(
            matches!(c.send_mail(m), Err(ClientError::BadAddress(_))),
            "{to:?}"
        );
    }
    assert_eq!(c.send_mail(msg(&[])), Err(ClientError::NoRecipients));
    assert_eq!(
        c.data_sent(),
        Err(ClientError::WrongState("not sending data"))
    );
}

/// Drives a client through a scripted server transcript fed in two pieces split at `k`.
fn scripted(
    script: &[u8],
    k: usize,
    cfg: ClientConfig,
    m: OutgoingMessage,
) -> (String, Vec<ClientEvent>, Option<ClientError>) {
    let mut c = ClientSession::new(cfg);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut m = Some(m);
    for piece in [&script[..k], &script[k..]] {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = match c.feed(&buf) {
                Ok(x) => x,
                Err(e) => {
                    out.extend_from_slice(c.output());
                    return (String::from_utf8(out).unwrap(), events, Some(e));
                }
            };
            buf.drain(..n);
            out.extend_from_slice(c.output());
            let l = c.output().len();
            c.consume_output(l);
            match ev {
                ClientEvent::NeedReply => break,
                ClientEvent::StartTls => {
                    events.push(ClientEvent::StartTls);
                    c.tls_established().unwrap();
                }
                ClientEvent::Ready => match m.take() {
                    Some(m) => c.send_mail(m).unwrap(),
                    None => {
                        if c.quit().is_err() {
                            break;
                        }
                    }
                },
                ClientEvent::SendData => {
                    out.extend_from_slice(b"<body>\r\n.\r\n");
                    c.data_sent().unwrap();
                }
                ClientEvent::Closed => {
                    events.push(ClientEvent::Closed);
                    return (String::from_utf8(out).unwrap(), events, None);
                }
                ev => events.push(ev),
            }
        }
    }
    (String::from_utf8(out).unwrap(), events, None)
}

#[test]
fn scripted_starttls_ehlo_fallback_split_everywhere() {
    let script = b"220 mx ESMTP\r\n\
        250-mx\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250 PIPELINING\r\n\
        220 2.0.0 go ahead\r\n\
        250-mx\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n\
        250 ok\r\n250 ok\r\n354 go\r\n250 ok queued\r\n221 bye\r\n";
    let expect_out = "EHLO me\r\nSTARTTLS\r\nEHLO me\r\nMAIL FROM:<sender@a.example> SIZE=20\r\n\
        RCPT TO:<x@y.example>\r\n<body>\r\n.\r\nQUIT\r\n";
    for k in 0..=script.len() {
        let (out, events, err) =
            scripted(script, k, ClientConfig::new("me"), msg(&["x@y.example"]));
        assert_eq!(err, None, "split {k}");
        // Without PIPELINING after TLS, DATA waits for the RCPT reply.
        assert_eq!(out.replace("DATA\r\n", ""), expect_out, "split {k}");
        assert!(out.contains("RCPT TO:<x@y.example>\r\nDATA\r\n<body>"));
        assert_eq!(events.len(), 3, "split {k}: {events:?}");
        assert_eq!(events[0], ClientEvent::StartTls);
        assert_eq!(delivered(&events[1]), vec![true]);
        assert_eq!(events[2], ClientEvent::Closed);
    }
    // EHLO refused: HELO, no extensions, no SIZE parameter.
    let script =
        b"220 old\r\n502 what\r\n250 old\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
    for k in 0..=script.len() {
        let (out, events, err) =
            scripted(script, k, ClientConfig::new("me"), msg(&["x@y.example"]));
        assert_eq!(err, None);
        assert_eq!(
            out,
            "EHLO me\r\nHELO me\r\nMAIL FROM:<sender@a.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n<body>\r\n.\r\nQUIT\r\n"
        );
        assert_eq!(delivered(&events[0]), vec![true]);
    }
}

#[test]
fn scripted_errors() {
    let cfg = || ClientConfig::new("me");
    let (out, _, err) = scripted(b"554 go away\r\n", 0, cfg(), msg(&["x@y.z"]));
    assert!(matches!(err, Some(ClientError::Greeting(r)) if r.code() == 554));
    assert_eq!(out, "QUIT\r\n");
    let (_, _, err) = scripted(b"220 hi\r\nHTTP/1.1 400\r\n", 3, cfg(), msg(&["x@y.z"]));
    assert_eq!(err, Some(ClientError::BadReply(ReplyError::Malformed)));
    let long = [b"220 ".as_slice(), &[b'x'; 600]].concat();
    let (_, _, err) = scripted(&long, 0, cfg(), msg(&["x@y.z"]));
    assert_eq!(
        err,
        Some(ClientError::BadReply(ReplyError::LineTooLong(512)))
    );
    let (_, _, err) = scripted(b"220 hi\r\n550 no\r\n550 no\r\n", 0, cfg(), msg(&["x@y.z"]));
    assert!(matches!(err, Some(ClientError::Helo(r)) if r.code() == 550));
    // A reply nobody asked for.
    let mut c = ClientSession::new(cfg());
    c.feed(b"220 hi\r\n").unwrap();
    c.feed(b"250 ok\r\n").unwrap();
    assert_eq!(c.feed(b"250 extra\r\n").unwrap(), (0, ClientEvent::Ready));
    c.quit().unwrap();
    let (n, ev) = c.feed(b"221 bye\r\n250 extra\r\n").unwrap();
    assert_eq!((n, ev), (9, ClientEvent::Closed));
    let mut c = ClientSession::new(cfg());
    assert!(matches!(
        c.feed(b"220 a\r\n250 b\r\n250 c\r\n"),
        Ok((_, ClientEvent::Ready))
    ));
    let mut c = ClientSession::new(cfg());
    c.feed(b"220 a\r\n").unwrap();
    assert!(matches!(c.feed(b"250 b\r\n"), Ok((_, ClientEvent::Ready))));
    c.send_mail(msg(&["x@y.z"])).unwrap();
    assert!(matches!(
        c.feed(b"421 4.4.2 timeout\r\n"),
        Ok((_, ClientEvent::TransactionDone { .. }))
    ));
    assert_eq!(c.feed(b"").unwrap(), (0, ClientEvent::Closed));
}

#[test]
fn capabilities_parsing() {
    let r = Reply::new(
        250,
        None,
        "mx.example greets you\nPIPELINING\nsize 35882577\n8BITMIME\nSMTPUTF8\nSTARTTLS\nCHUNKING\n\
         ENHANCEDSTATUSCODES\nAUTH PLAIN login\nAUTH=LOGIN CRAM-MD5\nX-UNKNOWN",
    );
    let c = Capabilities::from_ehlo(&r);
    assert!(c.esmtp && c.pipelining && c.eightbitmime && c.smtputf8 && c.starttls && c.chunking);
    assert!(c.enhanced_status_codes);
    assert_eq!(c.size, Some(35_882_577));
    assert_eq!(c.auth, vec!["CRAM-MD5", "LOGIN", "PLAIN"]);
    let c = Capabilities::from_ehlo(&Reply::new(250, None, "mx\nSIZE"));
    assert!(c.size_offered);
    assert_eq!(c.size, None);
}

fn creds(user: &str, password: &str, mechanism: Option<&str>, require_tls: bool) -> Credentials {
    Credentials {
        user: user.into(),
        password: password.into(),
        mechanism: mechanism.map(str::to_string),
        require_tls,
    }
}

/// A session with `auth` after greeting and the EHLO reply `ehlo`; returns it and its output.
fn auth_session(
    ehlo: &[u8],
    auth: Credentials,
    tls: bool,
) -> (ClientSession, Result<ClientEvent, ClientError>, String) {
    let mut cfg = ClientConfig::new("me");
    cfg.starttls = false;
    cfg.implicit_tls = tls;
    cfg.auth = Some(auth);
    let mut c = ClientSession::new(cfg);
    c.feed(b"220 hi\r\n").unwrap();
    c.take_output();
    let ev = c.feed(ehlo).map(|(_, ev)| ev);
    let out = String::from_utf8(c.take_output()).unwrap();
    (c, ev, out)
}

#[test]
fn auth_plain_then_ready() {
    let (mut c, ev, out) = auth_session(
        b"250-me\r\n250 AUTH LOGIN PLAIN\r\n",
        creds("u", "p", None, false),
        false,
    );
    assert_eq!(ev, Ok(ClientEvent::NeedReply));
    // base64("\0u\0p")
    assert_eq!(out, "AUTH PLAIN AHUAcA==\r\n");
    assert_eq!(c.feed(b"235 ok\r\n").unwrap().1, ClientEvent::Ready);
    assert!(c.is_ready());
}

#[test]
fn auth_login_steps_and_refusal() {
    let (mut c, _, out) = auth_session(
        b"250-me\r\n250 AUTH PLAIN LOGIN\r\n",
        creds("user", "pw", Some("LOGIN"), true),
        true,
    );
    assert_eq!(out, "AUTH LOGIN\r\n");
    c.feed(b"334 VXNlcm5hbWU6\r\n").unwrap();
    assert_eq!(c.take_output(), b"dXNlcg==\r\n");
    c.feed(b"334 UGFzc3dvcmQ6\r\n").unwrap();
    assert_eq!(c.take_output(), b"cHc=\r\n");
    let e = c.feed(b"535 5.7.8 no\r\n").unwrap_err();
    assert!(matches!(&e, ClientError::Auth(t) if t == "user was refused: 535 5.7.8 no"));
    assert!(!e.to_string().contains("pw"), "{e}");
    assert_eq!(c.take_output(), b"QUIT\r\n");
}

#[test]
fn auth_needs_an_offered_mechanism_and_tls_when_secure() {
    let (_, ev, _) = auth_session(b"250 me\r\n", creds("u", "p", None, false), false);
    assert!(
        matches!(&ev, Err(ClientError::Auth(t)) if t == "the relay offers no AUTH (wanted PLAIN or LOGIN)"),
        "{ev:?}"
    );
    let secure = || creds("u", "p", None, true);
    let (_, ev, _) = auth_session(b"250-me\r\n250 AUTH PLAIN\r\n", secure(), false);
    assert!(matches!(ev, Err(ClientError::Auth(_))), "{ev:?}");
    let (_, ev, out) = auth_session(b"250-me\r\n250 AUTH PLAIN\r\n", secure(), true);
    assert_eq!(ev, Ok(ClientEvent::NeedReply));
    assert!(out.starts_with("AUTH PLAIN "), "{out}");
    // Credentials never show in Debug.
    assert!(!format!("{:?}", creds("u", "secret", None, false)).contains("secret"));
}

#[test]
fn reused_connection_opens_with_rset_pipelined() {
    let mut c = ClientSession::new(ClientConfig::new("me"));
    c.feed(b"220 hi\r\n250-me\r\n250 PIPELINING\r\n").unwrap();
    c.take_output();
    c.send_mail(msg(&["a@b.example"])).unwrap();
    assert_eq!(
        c.take_output(),
        b"MAIL FROM:<sender@a.example>\r\nRCPT TO:<a@b.example>\r\nDATA\r\n"
    );
    assert_eq!(
        c.feed(b"250 ok\r\n550 no\r\n354 go\r\n").unwrap().1,
        ClientEvent::NeedReply
    );
    assert_eq!(c.take_output(), b".\r\n");
    let (_, ev) = c.feed(b"250 ignored\r\n").unwrap();
    assert_eq!(delivered(&ev), vec![false]);
    assert_eq!(c.feed(b"").unwrap().1, ClientEvent::Ready);
    c.send_mail(msg(&["a@b.example"])).unwrap();
    assert!(c.take_output().starts_with(b"RSET\r\nMAIL FROM:"));
    // A 421 to the RSET: everyone deferred, the session is over.
    let (_, ev) = c.feed(b"421 4.3.2 bye\r\n").unwrap();
    let ClientEvent::TransactionDone { per_rcpt, .. } = ev else {
        panic!("{ev:?}")
    };
    assert!(matches!(&per_rcpt[0].outcome, RcptOutcome::Deferred(r) if r.code() == 421));
    assert_eq!(c.feed(b"").unwrap().1, ClientEvent::Closed);
    assert!(!c.is_ready());
}

#[test]
fn unpipelined_rset_then_mail_and_421_to_rcpt() {
    let mut c = ClientSession::new(ClientConfig::new("me"));
    c.feed(b"220 hi\r\n250 me\r\n").unwrap();
    c.send_mail(msg(&["a@b.example"])).unwrap();
    c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
    c.data_sent().unwrap();
    let (_, ev) = c.feed(b"250 queued\r\n").unwrap();
    assert_eq!(delivered(&ev), vec![true]);
    c.take_output();
    c.send_mail(msg(&["a@b.example", "c@d.example"])).unwrap();
    assert_eq!(c.take_output(), b"RSET\r\n");
    c.feed(b"250 reset\r\n").unwrap();
    assert_eq!(c.take_output(), b"MAIL FROM:<sender@a.example>\r\n");
    c.feed(b"250 ok\r\n").unwrap();
    assert_eq!(c.take_output(), b"RCPT TO:<a@b.example>\r\n");
    let (_, ev) = c.feed(b"421 4.4.2 closing\r\n").unwrap();
    let ClientEvent::TransactionDone { per_rcpt, .. } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(per_rcpt.len(), 2);
    assert!(per_rcpt
        .iter()
        .all(|r| matches!(&r.outcome, RcptOutcome::Deferred(r) if r.code() == 421)));
    assert_eq!(c.feed(b"").unwrap().1, ClientEvent::Closed);
}

#[test]
fn reply_texts_as_qmail_remote_reports_them() {
    let mut p = ReplyParser::default();
    let mut text = |wire: &[u8]| reply_text(&p.parse(wire).unwrap().1.unwrap());
    assert_eq!(text(b"250 2.0.0 queued\r\n"), "250 2.0.0 queued");
    assert_eq!(
        text(b"550-5.1.1 no\r\n550 5.1.1 user\r\n"),
        "550 5.1.1 no\n550 5.1.1 user"
    );
    assert_eq!(text(b"451-a\r\n451 b\r\n"), "451 a\n451 b");
    assert_eq!(text(b"250\r\n"), "250");
}

#[test]
fn implicit_tls_skips_starttls() {
    let mut cfg = ClientConfig::new("me");
    cfg.implicit_tls = true;
    let mut c = ClientSession::new(cfg);
    assert!(c.is_tls());
    let (_, ev) = c.feed(b"220 hi\r\n250-me\r\n250 STARTTLS\r\n").unwrap();
    assert_eq!(ev, ClientEvent::Ready);
    assert_eq!(c.take_output(), b"EHLO me\r\n");
}
