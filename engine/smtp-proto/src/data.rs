//! The DATA body: the server-side scanner that finds the end of data and removes dot-stuffing
//! (RFC 5321 sections 4.1.1.4 and 4.5.2), and the client-side stuffer.
//!
//! The scanner is strict on purpose (SMTP smuggling, CVE-2023-51764/51765/51766): the data ends
//! only at `CRLF . CRLF`. A CR not followed by LF, or an LF not preceded by CR, anywhere in the
//! body makes the message refused, yet scanning goes on until the real `CRLF . CRLF`, so
//! `LF . LF`, `CR . CR`, `LF . CRLF`, `CRLF . LF` and friends can neither end a message early nor
//! start a second one. The scanner keeps its state between calls and never holds bytes back:
//! every byte handed to it is consumed, and body bytes come out as sub-slices of the input.

use std::ops::Range;

/// Why a message body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataError {
    /// A bare CR or bare LF was seen.
    BareCrLf,
    /// A line exceeded the text line cap.
    LineTooLong,
    /// The message exceeded the size cap.
    TooBig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of the data).
    LineStart,
    /// A `.` at line start was seen and dropped.
    Dot,
    /// `.` CR at line start.
    DotCr,
    /// Inside a line.
    InLine,
    /// CR inside a line.
    Cr,
}

/// Result of one [`DataScanner::scan`] step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// These bytes of the input belong to the message, as stored.
    Data(Range<usize>),
    /// `CRLF . CRLF` was consumed.
    End,
    /// Everything was consumed; more input is needed.
    NeedMore,
}

/// Incremental end-of-data finder and dot-unstuffer.
#[derive(Debug)]
pub(crate) struct DataScanner {
    state: State,
    line_len: usize,
    size: u64,
    max_line: usize,
    max_size: u64,
    error: Option<DataError>,
}

impl DataScanner {
    /// `max_line` counts the CRLF; 0 means no limit, as does `max_size` 0.
    pub(crate) fn new(max_line: usize, max_size: u64) -> DataScanner {
        DataScanner {
            state: State::LineStart,
            line_len: 0,
            size: 0,
            max_line,
            max_size,
            error: None,
        }
    }

    /// The first error seen, if any: the message must be refused at its end.
    pub(crate) fn error(&self) -> Option<DataError> {
        self.error
    }

    fn fail(&mut self, e: DataError) {
        self.error.get_or_insert(e);
    }

    /// Records a fault: the body bytes of the current run before `end` are still emitted, none
    /// after.
    fn fault(&mut self, run: &mut Option<usize>, end: usize, e: DataError) -> Option<Range<usize>> {
        let r = run.take().and_then(|start| self.emit(start..end));
        self.fail(e);
        r
    }

    /// Closes a run of body bytes, applying the size cap.
    fn emit(&mut self, run: Range<usize>) -> Option<Range<usize>> {
        if self.error.is_some() || run.is_empty() {
            return None;
        }
        let len = (run.end - run.start) as u64;
        if self.max_size > 0 && self.size + len > self.max_size {
            self.fail(DataError::TooBig);
            return None;
        }
        self.size += len;
        Some(run)
    }

    /// Scans `input`. Returns how many bytes were consumed and what was found; call again with
    /// the remaining bytes until [`Scan::NeedMore`] or [`Scan::End`].
    pub(crate) fn scan(&mut self, input: &[u8]) -> (usize, Scan) {
        let mut i = 0;
        let mut run: Option<usize> = None;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart => {
                    if b == b'.' {
                        // Stop the run before the dot, so the dot is never part of a slice.
                        if let Some(start) = run.take() {
                            if let Some(r) = self.emit(start..i) {
                                return (i, Scan::Data(r));
                            }
                        }
                        self.state = State::Dot;
                        self.line_len = 1;
                        i += 1;
                    } else {
                        self.state = State::InLine;
                        self.line_len = 0;
                    }
                }
                State::Dot => match b {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        self.fail(DataError::BareCrLf);
                        self.state = State::InLine;
                        i += 1;
                    }
                    // A stuffed dot: it was dropped, the rest of the line is data.
                    _ => self.state = State::InLine,
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return (i + 1, Scan::End);
                    }
                    self.fail(DataError::BareCrLf);
                    self.state = State::InLine;
                }
                State::InLine => {
                    if run.is_none() && self.error.is_none() {
                        run = Some(i);
                    }
                    let seg = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    let seg_start = i;
                    self.line_len += seg;
                    i += seg;
                    if self.max_line > 0 && self.line_len + 2 > self.max_line {
                        if let Some(r) = self.fault(&mut run, seg_start, DataError::LineTooLong) {
                            return (i, Scan::Data(r));
                        }
                    }
                    if i == input.len() {
                        break;
                    }
                    if input[i] == b'\r' {
                        self.state = State::Cr;
                        i += 1;
                    } else {
                        let at = i;
                        i += 1;
                        if let Some(r) = self.fault(&mut run, at, DataError::BareCrLf) {
                            return (i, Scan::Data(r));
                        }
                    }
                }
                State::Cr => {
                    if b == b'\n' {
                        // The CR may have ended the previous input: the LF starts a new run.
                        if run.is_none() && self.error.is_none() {
                            run = Some(i);
                        }
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        // Reprocess this byte inside the line (it may itself be a CR).
                        self.state = State::InLine;
                        if let Some(r) = self.fault(&mut run, i, DataError::BareCrLf) {
                            return (i, Scan::Data(r));
                        }
                    }
                }
            }
        }
        if let Some(start) = run {
            if let Some(r) = self.emit(start..input.len()) {
                return (input.len(), Scan::Data(r));
            }
        }
        (input.len(), Scan::NeedMore)
    }
}

/// Line-end checker for BDAT chunks (RFC 3030): chunk octets are not dot-stuffed, but they are
/// held to the same rules as a DATA body, so that a message received by BDAT can never carry a
/// bare CR or bare LF (or an over-long line) on to the next hop, where it could be read as an end
/// of data. State is kept across chunks: a CR ending one chunk may be completed by the LF that
/// starts the next.
#[derive(Clone, Debug, Default)]
pub(crate) struct LineEnds {
    pending_cr: bool,
    line_len: usize,
}

impl LineEnds {
    /// Checks `chunk`; `max_line` counts the CRLF, 0 means no limit.
    pub(crate) fn check(&mut self, chunk: &[u8], max_line: usize) -> Result<(), DataError> {
        let mut i = 0;
        while i < chunk.len() {
            if self.pending_cr {
                if chunk[i] != b'\n' {
                    return Err(DataError::BareCrLf);
                }
                self.pending_cr = false;
                self.line_len = 0;
                i += 1;
                continue;
            }
            let seg = memchr::memchr2(b'\r', b'\n', &chunk[i..]).unwrap_or(chunk.len() - i);
            self.line_len += seg;
            if max_line > 0 && self.line_len + 2 > max_line {
                return Err(DataError::LineTooLong);
            }
            i += seg;
            if i < chunk.len() {
                if chunk[i] == b'\n' {
                    return Err(DataError::BareCrLf);
                }
                self.pending_cr = true;
                i += 1;
            }
        }
        Ok(())
    }

    /// The last chunk is complete: a CR still waiting for its LF is a bare CR.
    pub(crate) fn finish(&self) -> Result<(), DataError> {
        if self.pending_cr {
            Err(DataError::BareCrLf)
        } else {
            Ok(())
        }
    }
}

/// Stateful client-side dot-stuffer (RFC 5321 4.5.2): doubles a leading `.` on every line and
/// turns bare LF and bare CR into CRLF, so that what is sent can never contain a premature or
/// ambiguous end of data. Feed the body in pieces with [`DotStuffer::push`], then
/// [`DotStuffer::finish`] appends the final CRLF (if missing) and `.` CRLF.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message.
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the stuffed form of `src` to `out`.
    pub fn push(&mut self, src: &[u8], out: &mut Vec<u8>) {
        out.reserve(src.len() + src.len() / 64 + 2);
        let mut i = 0;
        while i < src.len() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if src[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.at_line_start && src[i] == b'.' {
                out.push(b'.');
            }
            let seg = memchr::memchr2(b'\r', b'\n', &src[i..]).unwrap_or(src.len() - i);
            out.extend_from_slice(&src[i..i + seg]);
            if seg > 0 {
                self.at_line_start = false;
            }
            i += seg;
            if i < src.len() {
                if src[i] == b'\r' {
                    self.pending_cr = true;
                } else {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                i += 1;
            }
        }
    }

    /// Ends the message: completes the last line and appends the end-of-data mark.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Dot-stuffs a whole message for DATA: leading dots doubled, every line end made CRLF, a final
/// CRLF added if missing, and the terminating `.` CRLF appended.
pub fn dot_stuff(src: &[u8], out: &mut Vec<u8>) {
    let mut s = DotStuffer::new();
    s.push(src, out);
    s.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in pieces of `step` bytes; returns (body, end seen, error, bytes after end).
    fn scan_all(
        input: &[u8],
        step: usize,
        max_line: usize,
        max_size: u64,
    ) -> (Vec<u8>, bool, Option<DataError>, usize) {
        let mut s = DataScanner::new(max_line, max_size);
        let mut body = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let piece = &input[pos..end];
            let mut p = 0;
            loop {
                let (n, scan) = s.scan(&piece[p..]);
                let start = p;
                p += n;
                match scan {
                    Scan::Data(r) => body.extend_from_slice(&piece[start + r.start..start + r.end]),
                    Scan::End => return (body, true, s.error(), input.len() - (pos + p)),
                    Scan::NeedMore => break,
                }
            }
            pos = end;
        }
        (body, false, s.error(), 0)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        for step in [1, 2, 3, 7, 1000] {
            assert_eq!(
                scan_all(b"a\r\n.\r\nX", step, 0, 0),
                (b"a\r\n".to_vec(), true, None, 1)
            );
            assert_eq!(scan_all(b".\r\n", step, 0, 0), (Vec::new(), true, None, 0));
            let (_, end, err, _) = scan_all(b"a\n.\nb\r.\rc\r\n.\nd\n.\r\n", step, 0, 0);
            assert!(!end);
            assert_eq!(err, Some(DataError::BareCrLf));
            let (_, end, err, rest) = scan_all(b"a\n.\nb\r\n.\r\nz", step, 0, 0);
            assert!(end);
            assert_eq!(err, Some(DataError::BareCrLf));
            assert_eq!(rest, 1);
        }
    }

    #[test]
    fn unstuffing_and_limits() {
        for step in [1, 2, 5, 1000] {
            let (b, end, err, _) = scan_all(b"..a\r\n.b\r\n..\r\n.\r\n", step, 0, 0);
            assert_eq!(
                (b.as_slice(), end, err),
                (&b".a\r\nb\r\n.\r\n"[..], true, None)
            );
            let (_, end, err, _) = scan_all(b"12345\r\n.\r\n", step, 6, 0);
            assert_eq!((end, err), (true, Some(DataError::LineTooLong)));
            let (b, _, err, _) = scan_all(b"1234\r\n.\r\n", step, 6, 0);
            assert_eq!((b.len(), err), (6, None));
            let (b, end, err, _) = scan_all(b"1234\r\n5678\r\n.\r\n", step, 0, 8);
            assert_eq!((end, err), (true, Some(DataError::TooBig)));
            assert!(b.len() <= 8);
        }
    }

    #[test]
    fn bdat_line_ends() {
        let check = |chunks: &[&[u8]], max: usize| {
            let mut l = LineEnds::default();
            for c in chunks {
                l.check(c, max)?;
            }
            l.finish()
        };
        assert_eq!(check(&[b"a\r\nb\r\n"], 0), Ok(()));
        assert_eq!(check(&[b"a\r", b"", b"\nb"], 0), Ok(()));
        for bad in [
            &b"a\nb"[..],
            b"a\r.\r\n",
            b"\r.\r",
            b"a\r",
            b"\n.\n",
            b"x\r\r\n",
        ] {
            for k in 0..=bad.len() {
                assert_eq!(
                    check(&[&bad[..k], &bad[k..]], 0),
                    Err(DataError::BareCrLf),
                    "{bad:?} split {k}"
                );
            }
        }
        assert_eq!(check(&[b"1234\r\n"], 6), Ok(()));
        assert_eq!(check(&[b"123", b"45\r\n"], 6), Err(DataError::LineTooLong));
    }

    #[test]
    fn stuffer() {
        let mut out = Vec::new();
        dot_stuff(b".a\nb\r\n.\r\n\rc", &mut out);
        assert_eq!(out, b"..a\r\nb\r\n..\r\n\r\nc\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"", &mut out);
        assert_eq!(out, b".\r\n");
        // Split input gives the same result.
        let src = b"x\r\n.y\r\r\n.\n";
        let mut whole = Vec::new();
        dot_stuff(src, &mut whole);
        for k in 0..=src.len() {
            let mut s = DotStuffer::new();
            let mut out = Vec::new();
            s.push(&src[..k], &mut out);
            s.push(&src[k..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "split {k}");
        }
    }

    fn stuffed(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(msg, &mut out);
        out
    }

    #[test]
    fn stuffer_line_ends_and_smuggling() {
        assert_eq!(stuffed(b"a\n.b\n..\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(stuffed(b".x"), b"..x\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\nb\n"), b"a\r\nb\r\n.\r\n");
        // Bare CR is a line end too: `\r.\r` can never leave as an end of data.
        assert_eq!(stuffed(b"a\r.\rb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuffed(b"a\r.\r\n"), b"a\r\n..\r\n.\r\n");
    }

    /// The segment-wise stuffer against the byte-at-a-time definition, on random mixes of the
    /// bytes that matter.
    #[test]
    fn stuffer_matches_bytewise_definition() {
        fn reference(msg: &[u8]) -> Vec<u8> {
            let (mut out, mut bol, mut prev) = (Vec::new(), true, 0u8);
            for &b in msg {
                // A CR not followed by LF is completed to CRLF.
                if prev == b'\r' && b != b'\n' {
                    out.push(b'\n');
                    bol = true;
                }
                if bol && b == b'.' {
                    out.push(b'.');
                }
                if b == b'\n' && prev != b'\r' {
                    out.push(b'\r');
                }
                out.push(b);
                bol = b == b'\n';
                prev = b;
            }
            if prev == b'\r' {
                out.push(b'\n');
                bol = true;
            }
            if !msg.is_empty() && !bol {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|i| b".\r\nab"[((seed >> (i * 2 % 60)) % 5) as usize])
                .collect();
            assert_eq!(stuffed(&msg), reference(&msg), "input {msg:?}");
        }
    }
}
