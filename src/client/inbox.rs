//! What the client has sent and the session has not yet acted on: the read buffer, and the
//! whole frames at its front, each parsed once when it arrived.
//!
//! Idle handling, routing and forwarding all read the same parsed frames. A frame that does
//! not parse stops the scan; its error is reported once the valid frames before it are taken,
//! so that what came first is still served first.

use crate::protocol::frontend::{self, Message};
use crate::protocol::parsed::Parsed;
use crate::protocol::ProtocolError;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;

#[derive(Default)]
pub struct Inbox {
    pub buf: BytesMut,
    /// Whole frames at the front of `buf`, in order.
    frames: VecDeque<Parsed>,
    /// Bytes of `buf` the frames cover.
    scanned: usize,
    /// Why the bytes after the frames cannot be a frame.
    bad: Option<ProtocolError>,
}

/// The frame at the front: its bytes and its message.
pub struct Frame<'a> {
    pub tag: u8,
    pub bytes: &'a [u8],
    pub msg: Message<'a>,
}

impl Inbox {
    pub fn new(buf: BytesMut) -> Inbox {
        Inbox {
            buf,
            ..Inbox::default()
        }
    }

    /// Parses the frames that arrived whole since the last scan.
    pub fn scan(&mut self, max_packet_size: usize) {
        while self.bad.is_none() && self.scanned < self.buf.len() {
            let rest = &self.buf[self.scanned..];
            let h = match frontend::header(rest, max_packet_size) {
                Ok(Some(h)) if rest.len() >= h.len => h,
                Ok(_) => return,
                Err(e) => {
                    self.bad = Some(e);
                    return;
                }
            };
            let frame = &rest[..h.len];
            match frontend::parse(h.tag, &frame[5..]) {
                Ok(msg) => self.frames.push_back(Parsed::new(frame, msg)),
                Err(e) => {
                    self.bad = Some(e);
                    return;
                }
            }
            self.scanned += h.len;
        }
    }

    /// The first whole frame, if there is one.
    pub fn front(&self) -> Option<Frame<'_>> {
        let p = self.frames.front()?;
        let bytes = &self.buf[..p.len];
        Some(Frame {
            tag: p.tag,
            bytes,
            msg: p.message(bytes),
        })
    }

    /// Done with the first frame.
    pub fn pop(&mut self) {
        if let Some(p) = self.frames.pop_front() {
            self.buf.advance(p.len);
            self.scanned -= p.len;
        }
    }

    /// Every whole frame's message, in order.
    pub fn messages(&self) -> impl Iterator<Item = Message<'_>> {
        let mut at = 0;
        self.frames.iter().map(move |p| {
            let bytes = &self.buf[at..at + p.len];
            at += p.len;
            p.message(bytes)
        })
    }

    /// The client's bytes break the protocol, and every frame before the fault is taken.
    pub fn fault(&mut self) -> Option<ProtocolError> {
        if self.frames.is_empty() {
            self.bad.take()
        } else {
            None
        }
    }

    /// Puts `replay` (frames already taken once) back in front of what is here, to be taken
    /// again.
    pub fn put_back(&mut self, mut replay: BytesMut, max_packet_size: usize) {
        replay.extend_from_slice(&self.buf);
        self.buf = replay;
        self.frames.clear();
        self.scanned = 0;
        self.bad = None;
        self.scan(max_packet_size);
    }

    /// Gives the buffers back while nothing is waiting in them (an idle client's memory).
    pub fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            *self = Inbox::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(inbox: &Inbox) -> Vec<u8> {
        inbox.messages().map(|m| tag(&m)).collect()
    }

    fn tag(m: &Message<'_>) -> u8 {
        match m {
            Message::Query(_) => b'Q',
            Message::Sync => b'S',
            _ => b'?',
        }
    }

    #[test]
    fn frames_are_parsed_as_they_complete_and_taken_in_order() {
        let mut all = BytesMut::new();
        frontend::encode_query(&mut all, "SELECT 1");
        frontend::encode_sync(&mut all);
        let mut inbox = Inbox::default();
        inbox.buf.extend_from_slice(&all[..7]);
        inbox.scan(1 << 20);
        assert!(inbox.front().is_none(), "half a frame is no frame");
        inbox.buf.extend_from_slice(&all[7..]);
        inbox.scan(1 << 20);
        assert_eq!(frames(&inbox), b"QS");
        assert_eq!(inbox.front().unwrap().msg, Message::Query(b"SELECT 1"));
        inbox.pop();
        assert_eq!(inbox.front().unwrap().tag, b'S');
        inbox.pop();
        assert!(inbox.buf.is_empty() && inbox.front().is_none());
    }

    #[test]
    fn a_bad_frame_is_reported_after_the_good_ones_before_it() {
        let mut inbox = Inbox::default();
        frontend::encode_query(&mut inbox.buf, "SELECT 1");
        inbox.buf.extend_from_slice(b"Z\0\0\0\x04");
        inbox.scan(1 << 20);
        assert_eq!(inbox.fault(), None, "the Query comes first");
        inbox.pop();
        assert_eq!(inbox.fault(), Some(ProtocolError::UnknownMessage(b'Z')));
    }

    #[test]
    fn replayed_frames_come_before_the_rest() {
        let mut inbox = Inbox::default();
        frontend::encode_sync(&mut inbox.buf);
        inbox.scan(1 << 20);
        let mut replay = BytesMut::new();
        frontend::encode_query(&mut replay, "SELECT 1");
        inbox.put_back(replay, 1 << 20);
        assert_eq!(frames(&inbox), b"QS");
    }
}
