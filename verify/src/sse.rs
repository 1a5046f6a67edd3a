//! The byte stream of the revocation feed, guarded before it reaches the SSE parser
//! (`eventsource-stream`): every line and every event is bounded, a stream that stays silent
//! too long is cut, and each chunk received is reported (the staleness clock counts bytes,
//! keep-alive comments included, which the parser swallows).
//!
//! The parser buffers a line until its end and an event until its blank line; without these
//! bounds a broken or hostile peer could make it grow without limit.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::Error as HttpError;

/// Longest line accepted (a revocation event's `data:` line is ~250 bytes).
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Largest event accepted, comment lines excluded.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Why the guarded stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("connection lost: {0}")]
    Transport(#[from] HttpError),
    #[error("nothing received for {0:?}")]
    Silent(Duration),
    #[error("a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("an event larger than {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Line and event sizes, tracked byte by byte. Lines end with CR, LF or CRLF (the SSE grammar).
#[derive(Default)]
struct Framing {
    /// Bytes in the current line.
    line: usize,
    /// Bytes in the current event's field lines.
    event: usize,
    /// The current line is a comment (starts with `:`): not part of any event.
    comment: bool,
    /// The previous byte was CR: an LF now completes a CRLF, not a new line.
    after_cr: bool,
}

impl Framing {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    if self.line == 0 {
                        self.event = 0; // a blank line ends the event
                    }
                    self.line = 0;
                    self.comment = false;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.after_cr = false;
                    if self.line == 0 {
                        self.comment = b == b':';
                    }
                    self.line += 1;
                    if !self.comment {
                        self.event += 1;
                    }
                    if self.line > MAX_LINE_BYTES {
                        return Err(StreamError::LineTooLong);
                    }
                    if self.event > MAX_EVENT_BYTES {
                        return Err(StreamError::EventTooLarge);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `body` with the bounds above, cut after `silence` without a byte; `on_bytes` runs as each
/// chunk arrives, before its events are parsed. Ends after its first error.
pub(crate) fn guarded<'a, S, F>(
    body: S,
    silence: Duration,
    on_bytes: F,
) -> impl Stream<Item = Result<Bytes, StreamError>> + Send + 'a
where
    S: Stream<Item = Result<Bytes, HttpError>> + Send + Unpin + 'a,
    F: FnMut() + Send + 'a,
{
    futures::stream::unfold(Some((body, Framing::default(), on_bytes)), move |state| async move {
        let (mut body, mut framing, mut on_bytes) = state?;
        let item = match tokio::time::timeout(silence, body.next()).await {
            Err(_) => Err(StreamError::Silent(silence)),
            Ok(None) => return None,
            Ok(Some(Err(e))) => Err(StreamError::Transport(e)),
            Ok(Some(Ok(chunk))) => {
                on_bytes();
                framing.feed(&chunk).map(|()| chunk)
            }
        };
        match item {
            Ok(chunk) => Some((Ok(chunk), Some((body, framing, on_bytes)))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parts: &[&[u8]]) -> Result<(), StreamError> {
        let mut f = Framing::default();
        parts.iter().try_for_each(|p| f.feed(p))
    }

    #[test]
    fn lines_and_events_are_bounded_whatever_the_line_endings() {
        let line = vec![b'a'; MAX_LINE_BYTES];
        assert!(feed(&[b"data: ", &line[6..], b"\n\n"]).is_ok());
        assert!(matches!(feed(&[&line, b"a"]), Err(StreamError::LineTooLong)));
        // Split across chunks, the count goes on.
        assert!(matches!(feed(&[&line[..10], &line[10..], b"a"]), Err(StreamError::LineTooLong)));
        let short = vec![b'a'; 1000];
        for eol in [&b"\n"[..], b"\r", b"\r\n"] {
            let mut ok: Vec<u8> = vec![];
            let mut too_big: Vec<u8> = vec![];
            for i in 0..100 {
                ok.extend_from_slice(&short);
                ok.extend_from_slice(eol);
                ok.extend_from_slice(eol); // a blank line after each: 100 small events
                if i < 17 {
                    too_big.extend_from_slice(&short);
                    too_big.extend_from_slice(eol);
                }
            }
            assert!(feed(&[&ok]).is_ok());
            assert!(matches!(feed(&[&too_big]), Err(StreamError::EventTooLarge)));
        }
        // Keep-alive comments never add up to an event, even without blank lines between them.
        let comments: Vec<u8> = b": keep-alive\n".repeat(10_000);
        assert!(feed(&[&comments]).is_ok());
    }
}
