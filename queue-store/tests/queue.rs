//! Integration tests over real files in temp dirs, each run on both the
//! io_uring and the epoll driver.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use queue_store::{
    scan, Envelope, MessageId, Queue, QueueConfig, QueueError, RecipientOutcome, RecipientState,
};
use shard::io::{run, Driver};

fn on_both<F, Fut>(f: F)
where
    F: Fn(Driver, PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    for d in [Driver::Uring, Driver::Epoll] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue1");
        run(d, f(d, dir));
    }
}

fn cfg(dir: &Path) -> QueueConfig {
    QueueConfig::new(dir, 1)
}

fn env(n: usize) -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        recipients: (0..n).map(|i| format!("rcpt{i}@example.net")).collect(),
        arrival: 1_000,
        client_ip: Some("192.0.2.1".parse().unwrap()),
        helo: "client.example.org".into(),
        auth_user: None,
        extra: vec![("qqeh".into(), "X-Test: 1\n".into())],
    }
}

async fn put(q: &Queue, body: &[u8], rcpts: usize) -> MessageId {
    let mut w = q.begin();
    w.write(body).await.unwrap();
    w.commit(env(rcpts)).await.unwrap()
}

fn delivered() -> RecipientOutcome {
    RecipientOutcome::Delivered {
        reply: "250 ok".into(),
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn commit_read_reopen_round_trip() {
    on_both(|_, dir| async move {
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 0);
        let mut ids = Vec::new();
        for i in 0..20 {
            let body = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 100));
            let mut w = q.begin();
            // Split into chunks as SMTP DATA would.
            for c in body.as_bytes().chunks(7) {
                w.write(c).await.unwrap();
            }
            let mut e = env(1 + i % 3);
            e.auth_user = i.is_multiple_of(2).then(|| "alice".to_string());
            let id = w.commit(e.clone()).await.unwrap();
            assert_eq!(*q.envelope(&id).unwrap(), e);
            ids.push((id, body, e));
        }
        for (id, body, _) in &ids {
            assert_eq!(q.read_message(id).await.unwrap(), body.as_bytes());
        }
        drop(q);
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 20);
        assert_eq!(rep.torn_bytes, 0);
        assert!(rep.corrupt_records.is_empty());
        for (id, body, e) in &ids {
            assert_eq!(q.read_message(id).await.unwrap(), body.as_bytes());
            assert_eq!(*q.envelope(id).unwrap(), *e);
            assert_eq!(id.to_string().parse::<MessageId>().unwrap(), *id);
        }
        // New ids keep growing after a restart.
        let id = put(&q, b"after restart\r\n", 1).await;
        assert!(ids.iter().all(|(old, _, _)| *old < id));
        // The CLI scan sees the same.
        let listed = scan(&dir).unwrap();
        assert_eq!(listed.len(), 21);
        assert_eq!(listed[0].id, ids[0].0);
        assert_eq!(*listed[0].envelope, ids[0].2);
    });
}

#[test]
fn every_transition_of_the_table() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let id = put(&q, b"m\r\n", 4).await;
        // commit -> Pending, attempts 0, due at arrival.
        let st = q.recipients(&id).unwrap();
        assert!(st.iter().all(|r| r.state == RecipientState::Pending
            && r.attempts == 0
            && r.next_attempt == 1000));
        assert_eq!(q.next_due_time(), Some(1000));
        assert!(q.due(999, 10).is_empty());
        // Pending -> leased: handed out once.
        let due = q.due(1000, 10);
        assert_eq!(due.len(), 4);
        assert_eq!(due[2].recipient, "rcpt2@example.net");
        assert!(q.due(1000, 10).is_empty());
        assert_eq!(q.stats().recipients_leased, 4);
        // leased -> release -> Pending again.
        q.release(&id, 3);
        assert_eq!(q.due(1000, 10).len(), 1);
        // Deferred -> Pending with attempts+1 and the new time.
        q.record_outcomes(
            &id,
            &[(
                0,
                RecipientOutcome::Deferred {
                    reply: "451 try later".into(),
                    next_attempt: 5000,
                },
            )],
        )
        .await
        .unwrap();
        let r0 = &q.recipients(&id).unwrap()[0];
        assert_eq!(
            (r0.state, r0.attempts, r0.next_attempt),
            (RecipientState::Pending, 1, 5000)
        );
        assert_eq!(r0.last_reply, "451 try later");
        assert_eq!(q.next_due_time(), Some(5000));
        // Delivered -> Done; Failed -> Failed.
        q.record_outcomes(
            &id,
            &[
                (1, delivered()),
                (
                    2,
                    RecipientOutcome::Failed {
                        reply: "550 no such user".into(),
                    },
                ),
            ],
        )
        .await
        .unwrap();
        let st = q.recipients(&id).unwrap();
        assert_eq!(st[1].state, RecipientState::Done);
        assert_eq!(st[2].state, RecipientState::Failed);
        // Final states refuse further outcomes; nothing is written.
        let before = q.stats().outcome_records;
        for (idx, o) in [(1, delivered()), (2, delivered())] {
            let e = q.record_outcomes(&id, &[(idx, o)]).await.unwrap_err();
            assert!(matches!(e, QueueError::Transition { .. }), "{e}");
            assert!(!e.is_temporary());
        }
        let e = q
            .record_outcomes(&id, &[(9, delivered())])
            .await
            .unwrap_err();
        assert!(matches!(e, QueueError::NoSuchRecipient { .. }));
        assert_eq!(q.stats().outcome_records, before);
        // Restart: pending ones stay pending (lease forgotten), final stay final.
        drop(q);
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.recipients_pending, 2);
        let st = q.recipients(&id).unwrap();
        assert_eq!(st[0].attempts, 1);
        assert_eq!(st[1].state, RecipientState::Done);
        assert_eq!(st[2].state, RecipientState::Failed);
        assert_eq!(st[3].state, RecipientState::Pending);
        let due: Vec<usize> = q.due(u64::MAX, 10).iter().map(|d| d.rcpt).collect();
        assert_eq!(due, vec![3, 0]);
        // All final -> message dead, gone from the queue and after restart.
        q.record_outcomes(&id, &[(0, delivered()), (3, delivered())])
            .await
            .unwrap();
        assert!(q.envelope(&id).is_none());
        assert!(matches!(
            q.read_message(&id).await,
            Err(QueueError::UnknownMessage(_))
        ));
        drop(q);
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 0);
        assert!(q.envelope(&id).is_none());
        assert!(q.due(u64::MAX, 10).is_empty());
    });
}

/// Builds a queue with `n` committed messages and returns the segment path
/// and the offset of the last record.
async fn queue_with(dir: &Path, n: usize) -> (PathBuf, u64, Vec<MessageId>) {
    let (q, _) = Queue::open(cfg(dir)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(put(&q, format!("body {i}\r\n").as_bytes(), 2).await);
    }
    let seg = dir.join("seg").join("00000001.log");
    (seg, u64::from(ids.last().unwrap().offset), ids)
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    on_both(|_, dir| async move {
        let (seg, last_off, ids) = queue_with(&dir, 3).await;
        let full = std::fs::read(&seg).unwrap();
        let work = dir.parent().unwrap().join("torn");
        let lo = last_off as usize;
        // The record is complete once its header and payload are there; the
        // zero padding after it is not needed.
        let rec_end = lo + 12 + u32::from_le_bytes(full[lo..lo + 4].try_into().unwrap()) as usize;
        for cut in lo..=full.len() {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(work.join("seg")).unwrap();
            std::fs::write(work.join("seg").join("00000001.log"), &full[..cut]).unwrap();
            let (q, rep) = Queue::open(cfg(&work)).await.unwrap();
            let complete = cut >= rec_end;
            assert_eq!(rep.messages, if complete { 3 } else { 2 }, "cut {cut}");
            assert_eq!(
                rep.torn_bytes,
                if complete { 0 } else { cut as u64 - last_off }
            );
            assert!(rep.corrupt_records.is_empty());
            assert!(q.envelope(&ids[0]).is_some() && q.envelope(&ids[1]).is_some());
            assert_eq!(q.envelope(&ids[2]).is_some(), complete);
            // The file was truncated: appends continue cleanly.
            if cut.is_multiple_of(13) || complete {
                let id = put(&q, b"after\r\n", 1).await;
                drop(q);
                let (q, rep) = Queue::open(cfg(&work)).await.unwrap();
                assert_eq!(rep.torn_bytes, 0);
                assert_eq!(rep.messages, if complete { 4 } else { 3 });
                assert_eq!(q.read_message(&id).await.unwrap(), b"after\r\n");
            }
        }
    });
}

#[test]
fn flipped_byte_rejects_that_record_only() {
    on_both(|_, dir| async move {
        let (seg, _, ids) = queue_with(&dir, 3).await;
        let mut data = std::fs::read(&seg).unwrap();
        data[ids[1].offset as usize + 30] ^= 0x01;
        std::fs::write(&seg, &data).unwrap();
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 2);
        assert_eq!(rep.corrupt_records.len(), 1, "{rep:?}");
        assert!(rep.corrupt_records[0].contains("checksum"));
        assert_eq!(rep.torn_bytes, 0);
        assert!(q.envelope(&ids[1]).is_none());
        assert_eq!(q.read_message(&ids[2]).await.unwrap(), b"body 2\r\n");
    });
}

#[test]
fn dead_segments_are_deleted() {
    on_both(|_, dir| async move {
        let mut c = cfg(&dir);
        c.segment_size = 64 << 10;
        let (q, _) = Queue::open(c.clone()).await.unwrap();
        let body = vec![b'a'; 4000];
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(put(&q, &body, 2).await);
        }
        let segs = q.stats().segments;
        assert!(segs >= 6, "{segs}");
        // Finishing a later message alone deletes nothing (prefix rule).
        q.record_outcomes(&ids[99], &[(0, delivered()), (1, delivered())])
            .await
            .unwrap();
        assert_eq!(q.stats().segments, segs);
        for id in &ids[..99] {
            q.record_outcomes(id, &[(0, delivered()), (1, delivered())])
                .await
                .unwrap();
        }
        let st = q.stats();
        assert_eq!(st.messages, 0);
        assert_eq!(st.segments, 1, "{st:?}");
        assert_eq!(files_in(&dir.join("seg")).len(), 1);
        drop(q);
        let (q, rep) = Queue::open(c).await.unwrap();
        assert_eq!(rep.messages, 0);
        assert_eq!(q.stats().segments, 1);
    });
}

#[test]
fn compaction_moves_live_messages_and_frees_the_segment() {
    on_both(|_, dir| async move {
        let mut c = cfg(&dir);
        c.segment_size = 64 << 10;
        let (q, _) = Queue::open(c.clone()).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..60 {
            ids.push(put(&q, format!("{i}:{}", "b".repeat(3000)).as_bytes(), 2).await);
        }
        assert!(q.stats().segments >= 3);
        // Keep one message of the first segment alive (one recipient
        // deferred, one done), finish every other message.
        let keep = ids[1];
        q.record_outcomes(
            &keep,
            &[
                (0, delivered()),
                (
                    1,
                    RecipientOutcome::Deferred {
                        reply: "451 later".into(),
                        next_attempt: 77_777,
                    },
                ),
            ],
        )
        .await
        .unwrap();
        for id in ids.iter().filter(|i| **i != keep) {
            q.record_outcomes(id, &[(0, delivered()), (1, delivered())])
                .await
                .unwrap();
        }
        assert!(q.stats().segments >= 2);
        let moved = q.maintain().await.unwrap();
        assert_eq!(moved, 1);
        let st = q.stats();
        assert_eq!(st.segments, 1, "{st:?}");
        assert_eq!(st.compacted, 1);
        let body = format!("1:{}", "b".repeat(3000));
        assert_eq!(q.read_message(&keep).await.unwrap(), body.as_bytes());
        // Later outcomes apply on top of the copy.
        q.record_outcomes(
            &keep,
            &[(
                1,
                RecipientOutcome::Deferred {
                    reply: "452 still".into(),
                    next_attempt: 88_888,
                },
            )],
        )
        .await
        .unwrap();
        drop(q);
        let (q, rep) = Queue::open(c).await.unwrap();
        assert_eq!(rep.messages, 1);
        let r = q.recipients(&keep).unwrap();
        assert_eq!(r[0].state, RecipientState::Done);
        assert_eq!((r[1].attempts, r[1].next_attempt), (2, 88_888));
        assert_eq!(q.read_message(&keep).await.unwrap(), body.as_bytes());
    });
}

#[test]
fn big_message_spills_and_reads_back() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let body: Vec<u8> = (0..11 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut w = q.begin();
        for c in body.chunks(65536 + 3) {
            w.write(c).await.unwrap();
        }
        let id = w.commit(env(2)).await.unwrap();
        assert_eq!(q.stats().spilled, 1);
        assert_eq!(files_in(&dir.join("big")).len(), 1);
        assert!(q.read_message(&id).await.unwrap() == body);
        drop(q);
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 1);
        assert_eq!(rep.orphan_spill_files, 0);
        assert!(q.read_message(&id).await.unwrap() == body);
        let listed = scan(&dir).unwrap();
        assert!(listed[0].spilled && listed[0].size == body.len() as u64);
        // Done -> the spill file goes.
        q.record_outcomes(&id, &[(0, delivered()), (1, delivered())])
            .await
            .unwrap();
        assert!(files_in(&dir.join("big")).is_empty());
    });
}

#[test]
fn abort_and_drop_leave_nothing() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let mut w = q.begin();
        w.write(&vec![b'z'; 1 << 20]).await.unwrap();
        assert_eq!(files_in(&dir.join("big")).len(), 1);
        w.abort().await;
        assert!(files_in(&dir.join("big")).is_empty());
        let mut w = q.begin();
        w.write(&vec![b'z'; 1 << 20]).await.unwrap();
        drop(w);
        assert!(files_in(&dir.join("big")).is_empty());
        // A small aborted message writes nothing to the log.
        let before = q.stats().bytes_written;
        let mut w = q.begin();
        w.write(b"small").await.unwrap();
        w.abort().await;
        assert_eq!(q.stats().bytes_written, before);
        // Empty recipient list is refused and leaves nothing either.
        let mut w = q.begin();
        w.write(&vec![b'z'; 1 << 20]).await.unwrap();
        let mut e = env(1);
        e.recipients.clear();
        assert!(matches!(w.commit(e).await, Err(QueueError::NoRecipients)));
        assert!(files_in(&dir.join("big")).is_empty());
        drop(q);
        let (_, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 0);
    });
}

#[test]
fn orphan_spill_file_removed_at_open() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        drop(q);
        std::fs::write(dir.join("big").join("00000000deadbeef"), b"left over").unwrap();
        let (_, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.orphan_spill_files, 1);
        assert!(files_in(&dir.join("big")).is_empty());
    });
}

#[test]
fn concurrent_commits_share_syncs() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let syncs_before = q.stats().syncs;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let q = q.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let body = format!("message {i}\r\n");
                let id = put(&q, body.as_bytes(), 1).await;
                (id, body)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        let st = q.stats();
        assert_eq!(st.commits, 200);
        let syncs = st.syncs - syncs_before;
        assert!(syncs < 200, "syncs {syncs}");
        // The records of one sync go out as one write per contiguous run:
        // one per sync and segment, not one per record.
        assert!(
            st.record_writes <= syncs + st.segments,
            "{} record writes for {syncs} syncs",
            st.record_writes
        );
        eprintln!(
            "200 concurrent commits used {syncs} syncs and {} record writes",
            st.record_writes
        );
        drop(q);
        let (q, rep) = Queue::open(cfg(&dir)).await.unwrap();
        assert_eq!(rep.messages, 200);
        for (id, body) in done {
            assert_eq!(q.read_message(&id).await.unwrap(), body.as_bytes());
        }
    });
}

#[test]
fn subscribe_wakes_on_commit() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let wake = q.subscribe();
        let q2 = q.clone();
        let waiter = tokio::task::spawn_local(async move {
            wake.notified().await;
            q2.due(u64::MAX, 10).len()
        });
        tokio::task::yield_now().await;
        put(&q, b"x\r\n", 3).await;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("scheduler woke")
            .unwrap();
        assert_eq!(n, 3);
        let _ = Rc::strong_count(&q.subscribe());
    });
}

#[test]
fn segments_roll_and_ids_stay_valid() {
    on_both(|_, dir| async move {
        let mut c = cfg(&dir);
        c.segment_size = 64 << 10;
        let (q, _) = Queue::open(c.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let q = q.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let body = format!("{i}{}", "r".repeat(1000));
                (put(&q, body.as_bytes(), 1).await, body)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        assert!(q.stats().segments >= 4);
        drop(q);
        let (q, rep) = Queue::open(c).await.unwrap();
        assert_eq!(rep.messages, 300);
        for (id, body) in all {
            assert_eq!(q.read_message(&id).await.unwrap(), body.as_bytes());
        }
    });
}

#[test]
fn held_recipients_wait_for_take_matching() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        // Two messages, one recipient each at a held domain, plus one elsewhere.
        let mut w = q.begin();
        w.write(b"Subject: 1\n\nx\n").await.unwrap();
        let mut e = env(0);
        e.recipients = vec!["a@held.example".into(), "b@other.example".into()];
        let m1 = w.commit(e).await.unwrap();
        let mut w = q.begin();
        w.write(b"Subject: 2\n\ny\n").await.unwrap();
        let mut e = env(0);
        e.recipients = vec!["c@held.example".into()];
        let m2 = w.commit(e).await.unwrap();
        let held = |a: &str| a.ends_with("@held.example");

        // The scheduler holds what is due for the held domain.
        let due = q.due(u64::MAX, 100);
        assert_eq!(due.len(), 3);
        for d in &due {
            if held(&d.recipient) {
                assert!(q.hold(&d.id, d.rcpt));
            } else {
                q.record_outcomes(&d.id, &[(d.rcpt, delivered())])
                    .await
                    .unwrap();
            }
        }
        assert!(!q.hold(&m1, 1), "not leased: nothing to hold");
        let st = q.stats();
        assert_eq!((st.recipients_held, st.recipients_pending), (2, 2));
        assert!(q.due(u64::MAX, 100).is_empty(), "held ones are not due");
        assert_eq!(q.next_due_time(), None);

        // ETRN/ATRN: take them (leased), oldest first; a second take finds nothing.
        let taken = q.take_matching(held);
        let got: Vec<(MessageId, &str)> =
            taken.iter().map(|d| (d.id, d.recipient.as_str())).collect();
        assert_eq!(got, vec![(m1, "a@held.example"), (m2, "c@held.example")]);
        assert!(q.take_matching(held).is_empty());
        assert_eq!(q.stats().recipients_held, 0);
        // One delivered, one deferred into the future: the deferred one is
        // taken again at once by the next flush, whatever its next attempt.
        q.record_outcomes(&m1, &[(0, delivered())]).await.unwrap();
        let later = RecipientOutcome::Deferred {
            reply: "451 later".into(),
            next_attempt: u64::MAX - 1,
        };
        q.record_outcomes(&m2, &[(0, later)]).await.unwrap();
        assert!(q.envelope(&m1).is_none(), "m1 is finished");
        let again = q.take_matching(held);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, m2);
        assert_eq!(again[0].attempts, 1);
        // Held again, then released to the schedule when the domain is no
        // longer held (reload).
        assert!(q.hold(&m2, 0));
        assert_eq!(q.unhold(|a| a.starts_with("x")), 0);
        assert_eq!(q.unhold(held), 1);
        assert_eq!(q.next_due_time(), Some(u64::MAX - 1));
        assert_eq!(q.stats().recipients_held, 0);
    });
}

#[test]
fn operator_hold_survives_restart_and_tools_select_by_envelope() {
    on_both(|d, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut w = q.begin();
            w.write(format!("Subject: {i}\n\nx\n").as_bytes())
                .await
                .unwrap();
            ids.push(w.commit(env(2)).await.unwrap());
        }
        // Hold the first: its recipients are neither due nor taken by ETRN.
        assert!(q.freeze(&ids[0]).await.unwrap());
        assert!(!q.freeze(&ids[0]).await.unwrap(), "already held");
        assert!(q.is_frozen(&ids[0]));
        let due = q.due(u64::MAX, 100);
        assert_eq!(due.len(), 4, "two messages x two recipients");
        assert!(due.iter().all(|r| r.id != ids[0]));
        for r in &due {
            q.release(&r.id, r.rcpt);
        }
        assert!(q.take_matching(|_| true).iter().all(|r| r.id != ids[0]));
        // (take_matching leased the others: give them back.)
        for id in &ids[1..] {
            q.release(id, 0);
            q.release(id, 1);
        }
        assert_eq!(q.stats().messages_frozen, 1);
        assert_eq!(q.stats().recipients_pending, 6);
        let listed = scan(&dir).unwrap();
        assert_eq!(
            listed.iter().map(|m| m.held).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        drop(q);

        // After a restart it is still held; thaw makes it due now.
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        assert!(q.is_frozen(&ids[0]));
        assert!(q.due(u64::MAX, 100).iter().all(|r| r.id != ids[0]));
        for id in &ids[1..] {
            q.release(id, 0);
            q.release(id, 1);
        }
        assert!(q.thaw(&ids[0], 5).await.unwrap());
        assert!(!q.thaw(&ids[0], 5).await.unwrap());
        assert_eq!(q.next_due_time(), Some(5));

        // take_where picks by envelope and recipient, held or not.
        assert!(q.freeze(&ids[1]).await.unwrap());
        let taken = q.take_where(|id, _, idx| id == ids[1] && idx == 1);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].id, taken[0].rcpt), (ids[1], 1));
        let failed = RecipientOutcome::Failed {
            reply: "deleted".into(),
        };
        q.record_outcomes(&ids[1], &[(1, failed.clone())])
            .await
            .unwrap();
        let rest = q.take_where(|id, _, _| id == ids[1]);
        assert_eq!(rest.len(), 1);
        q.record_outcomes(&ids[1], &[(0, failed)]).await.unwrap();
        assert!(q.envelope(&ids[1]).is_none(), "gone when every rcpt failed");
        assert_eq!(q.stats().messages_frozen, 0);

        // retry_now: a deferred recipient becomes due at once.
        let r = q.take_where(|id, _, idx| id == ids[2] && idx == 0);
        let later = RecipientOutcome::Deferred {
            reply: "451 later".into(),
            next_attempt: 1 << 40,
        };
        q.record_outcomes(&ids[2], &[(r[0].rcpt, later)])
            .await
            .unwrap();
        let _ = d;
        assert_eq!(q.retry_now(7, |id, _, idx| id == ids[2] && idx == 0), 1);
        assert!(q.due(7, 100).iter().any(|r| r.id == ids[2] && r.rcpt == 0));
    });
}

#[test]
fn damaged_spill_body_is_quarantined_not_deferred_forever() {
    on_both(|_, dir| async move {
        let mut c = cfg(&dir);
        c.spill_threshold = 1024;
        let (q, _) = Queue::open(c.clone()).await.unwrap();
        let short = put(&q, &vec![b'a'; 4096], 2).await;
        let empty = put(&q, &vec![b'b'; 4096], 1).await;
        let flipped = put(&q, &vec![b'c'; 4096], 1).await;
        let whole = put(&q, &vec![b'd'; 4096], 1).await;
        drop(q);
        let mut spills = files_in(&dir.join("big"));
        assert_eq!(spills.len(), 4);
        // Names grow with the nonce: the order of the commits.
        spills.sort();
        let big = dir.join("big");
        std::fs::write(big.join(&spills[0]), vec![b'a'; 100]).unwrap();
        std::fs::write(big.join(&spills[1]), b"").unwrap();
        let mut body = vec![b'c'; 4096];
        body[7] = b'x';
        std::fs::write(big.join(&spills[2]), body).unwrap();
        let (q, rep) = Queue::open(c.clone()).await.unwrap();
        assert_eq!(rep.quarantined.len(), 3, "{:?}", rep.quarantined);
        assert!(rep.quarantined[0].starts_with(&short.to_string()));
        assert!(
            rep.quarantined[0].contains("100 bytes"),
            "{:?}",
            rep.quarantined
        );
        assert!(rep.quarantined[1].starts_with(&empty.to_string()));
        assert!(rep.quarantined[2].contains("checksum"));
        assert_eq!(rep.messages, 1);
        assert_eq!(q.stats().quarantined, 3);
        for id in [short, empty, flipped] {
            assert!(q.envelope(&id).is_none());
            let env =
                std::fs::read_to_string(dir.join("quarantine").join(format!("{id}.env"))).unwrap();
            assert!(
                env.contains("recipient <rcpt0@example.net> pending"),
                "{env}"
            );
            assert!(dir.join("quarantine").join(format!("{id}.body")).exists());
        }
        // Nothing of them is ever due again; the whole one is.
        let due = q.due(u64::MAX, 100);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, whole);
        drop(q);
        // Durable: a second recovery finds nothing more to do.
        let (_, rep) = Queue::open(c).await.unwrap();
        assert!(rep.quarantined.is_empty());
        assert_eq!(rep.messages, 1);
    });
}

/// A recipient released to a later time and then finished is never handed
/// out again (the schedule entry moves with its `next_attempt`; simulation
/// seed 1994).
#[test]
fn released_later_then_finished_is_not_due_again() {
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let id = put(&q, b"Subject: x\r\n\r\nbody\r\n", 2).await;
        let due = q.due(u64::MAX, 10);
        assert_eq!(due.len(), 2);
        q.release_at(&id, 0, 5_000);
        assert_eq!(q.recipients(&id).unwrap()[0].next_attempt, 5_000);
        assert!(q.due(4_999, 10).is_empty(), "released to 5000");
        q.record_outcomes(&id, &[(0, delivered())]).await.unwrap();
        assert!(
            q.due(u64::MAX, 10).is_empty(),
            "finished recipient due again"
        );
        q.record_outcomes(&id, &[(1, delivered())]).await.unwrap();
        assert!(q.message_ids().is_empty());
    });
}

/// A recipient put back in its channel's lane (its channel was full) comes
/// out only when that lane is asked for, as many as asked; unsorted ones
/// come out as before; `due` still sees every lane; a finished recipient
/// leaves its lane; and a restart starts every recipient unsorted.
#[test]
fn lanes_hand_out_a_full_channels_recipients_only_when_asked() {
    use queue_store::{Lane, LaneLimits};
    let limits = |unsorted, local, remote| LaneLimits {
        unsorted,
        local,
        remote,
    };
    on_both(|_, dir| async move {
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let id = put(&q, b"Subject: x\r\n\r\nbody\r\n", 6).await;
        let due = q.due_by_lane(u64::MAX, limits(100, 0, 0));
        assert_eq!(due.len(), 6);
        assert!(due.iter().all(|(_, lane)| *lane == Lane::Unsorted));
        // 0-3 wait for a local slot, 4 for a remote one, 5 goes back unsorted.
        for r in 0..4 {
            q.release_to(&id, r, Lane::Local);
        }
        q.release_to(&id, 4, Lane::Remote);
        q.release(&id, 5);
        // Nothing free on either channel: only the unsorted one comes out.
        let due = q.due_by_lane(u64::MAX, limits(100, 0, 0));
        assert_eq!(
            due.iter().map(|(d, l)| (d.rcpt, *l)).collect::<Vec<_>>(),
            vec![(5, Lane::Unsorted)]
        );
        // One local slot: one local recipient, the earliest (lowest index).
        let due = q.due_by_lane(u64::MAX, limits(100, 1, 0));
        assert_eq!(
            due.iter().map(|(d, l)| (d.rcpt, *l)).collect::<Vec<_>>(),
            vec![(0, Lane::Local)]
        );
        q.record_outcomes(&id, &[(0, delivered()), (5, delivered())])
            .await
            .unwrap();
        // `due` takes from every lane, earliest first.
        let due = q.due(u64::MAX, 2);
        assert_eq!(due.iter().map(|d| d.rcpt).collect::<Vec<_>>(), vec![1, 2]);
        for d in &due {
            q.release_to(&id, d.rcpt, Lane::Local);
        }
        drop(q);
        // After a restart every pending recipient is unsorted again.
        let (q, _) = Queue::open(cfg(&dir)).await.unwrap();
        let due = q.due_by_lane(u64::MAX, limits(100, 0, 0));
        assert_eq!(
            due.iter().map(|(d, _)| d.rcpt).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(due.iter().all(|(_, lane)| *lane == Lane::Unsorted));
    });
}
