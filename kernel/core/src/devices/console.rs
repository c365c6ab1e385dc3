//! Collects a VM's console output bytes into lines for the host console.
//!
//! A line is emitted on `'\n'` or when [`LINE_MAX`] bytes are pending. Lines
//! are sanitized: printable ASCII and tab pass, `'\r'` is dropped, anything
//! else becomes `'?'`, so a guest cannot send escape sequences to the host
//! terminal and every line is valid UTF-8. An unfinished line taken by a
//! console that turns raw ([`LineBuffer::take_partial`]) keeps its bytes.
//!
//! **Direct output.** A UART `OUT` that is nothing but an output byte (the
//! model says when: [`Serial16550::direct_tx_port`]) needs neither the VM's
//! lock nor its bus. The VM publishes that port for its vCPUs
//! ([`DirectTxPort`], updated under the VM's lock after every write to the
//! UART); the vCPU of a VM with one vCPU keeps such bytes in its own
//! [`DirectTx`] and hands them to the VM's console in order: before any
//! exit of its that reaches the VM, and at the end of its slice. (In a VM
//! with several vCPUs a byte one vCPU kept could be overtaken by another
//! vCPU's after the guest's own lock handed the UART over, so their output
//! goes through the model.)
//!
//! [`Serial16550::direct_tx_port`]: super::serial16550::Serial16550::direct_tx_port

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, Ordering};

/// Longest line before a forced flush.
pub const LINE_MAX: usize = 256;

/// Direct output bytes a vCPU holds before its next exit that reaches the
/// VM makes room (the platform exit that a full buffer takes).
pub const DIRECT_TX_MAX: usize = 128;

/// The port at which a guest `OUT` byte is, right now, only console output
/// ([`super::serial16550::Serial16550::direct_tx_port`]), published by the
/// VM under its lock and read by its vCPUs without it.
#[derive(Debug, Default)]
pub struct DirectTxPort(AtomicU32);

impl DirectTxPort {
    /// Set when a port is published (port 0 is a port too).
    const SET: u32 = 1 << 16;

    /// Publishes the port (`None`: every UART access goes to the model).
    pub fn publish(&self, port: Option<u16>) {
        let word = port.map_or(0, |p| u32::from(p) | Self::SET);
        self.0.store(word, Ordering::Release);
    }

    /// Whether `port` is the published port.
    #[inline(always)]
    pub fn is(&self, port: u16) -> bool {
        self.0.load(Ordering::Acquire) == u32::from(port) | Self::SET
    }
}

/// One vCPU's direct output bytes, not yet in the VM's console.
#[derive(Clone, Debug)]
pub struct DirectTx {
    /// The VM's published port (`None`: no direct output).
    port: Option<Arc<DirectTxPort>>,
    bytes: [u8; DIRECT_TX_MAX],
    len: usize,
}

impl Default for DirectTx {
    fn default() -> Self {
        DirectTx {
            port: None,
            bytes: [0; DIRECT_TX_MAX],
            len: 0,
        }
    }
}

impl PartialEq for DirectTx {
    fn eq(&self, other: &Self) -> bool {
        let same_port = match (&self.port, &other.port) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        same_port && self.pending() == other.pending()
    }
}

impl Eq for DirectTx {}

impl DirectTx {
    /// Empty, reading the VM's published `port`.
    pub fn new(port: Arc<DirectTxPort>) -> Self {
        DirectTx {
            port: Some(port),
            ..Self::default()
        }
    }

    /// Whether a byte `OUT` to `port` is direct output with room to keep it.
    #[inline(always)]
    pub fn accepts(&self, port: u16) -> bool {
        self.len < DIRECT_TX_MAX && self.port.as_ref().is_some_and(|p| p.is(port))
    }

    /// Keeps one byte (dropped when full: [`Self::accepts`] said no).
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// Whether no byte is kept (one compare: the slice's end asks).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes kept, oldest first.
    pub fn pending(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    /// Forgets the bytes kept (they went to the console).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A line buffer.
#[derive(Clone, Debug)]
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl LineBuffer {
    /// Empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one byte; calls `emit` with each completed line (without newline).
    pub fn push(&mut self, byte: u8, mut emit: impl FnMut(&str)) {
        match byte {
            b'\n' => self.flush(&mut emit),
            b'\r' => {}
            _ => self.append(byte, &mut emit),
        }
    }

    fn append(&mut self, byte: u8, emit: &mut impl FnMut(&str)) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
        if self.len >= LINE_MAX {
            self.flush(emit);
        }
    }

    /// Emits the pending bytes as a line, even an empty one after `'\n'`.
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        let bytes = self.buf.get_mut(..self.len).unwrap_or(&mut []);
        for b in bytes.iter_mut() {
            if !matches!(*b, b'\t' | 0x20..=0x7E) {
                *b = b'?';
            }
        }
        // Sanitized to ASCII just above, so this cannot fail.
        emit(core::str::from_utf8(bytes).unwrap_or("<invalid>"));
        self.len = 0;
    }

    /// Emits pending bytes, if any (used when a VM stops).
    pub fn flush_partial(&mut self, mut emit: impl FnMut(&str)) {
        if self.len > 0 {
            self.flush(&mut emit);
        }
    }

    /// Hands the pending bytes (as the guest wrote them, without `'\r'`) to
    /// `take` and empties the buffer; `take` is not called when nothing is pending.
    /// For a console switching to raw output, which shows an unfinished
    /// line (a shell prompt) as it is.
    pub fn take_partial(&mut self, take: impl FnOnce(&[u8])) {
        if self.len > 0 {
            take(self.buf.get(..self.len).unwrap_or(&[]));
            self.len = 0;
        }
    }

    /// Number of pending bytes.
    pub fn pending(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn feed(lb: &mut LineBuffer, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            lb.push(b, |l| out.push(l.to_string()));
        }
    }

    #[test]
    fn lines_and_sanitizing() {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        feed(&mut lb, b"ab\r\nc\x1b[2Jd\n\n", &mut out);
        assert_eq!(out, ["ab", "c?[2Jd", ""]);
        feed(&mut lb, b"tail", &mut out);
        assert_eq!(lb.pending(), 4);
        lb.flush_partial(|l| out.push(l.to_string()));
        assert_eq!(out.last().unwrap(), "tail");
        lb.flush_partial(|_| panic!("nothing pending"));
    }

    #[test]
    fn partial_line_taken_once() {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        feed(&mut lb, b"done\n/ # \x1b", &mut out);
        let mut taken = Vec::new();
        lb.take_partial(|b| taken.extend_from_slice(b));
        assert_eq!(taken, b"/ # \x1b");
        assert_eq!(lb.pending(), 0);
        lb.take_partial(|_| panic!("nothing pending"));
        assert_eq!(out, ["done"]);
    }

    #[test]
    fn direct_tx_follows_the_published_port_and_its_room() {
        let port = Arc::new(DirectTxPort::default());
        let mut tx = DirectTx::new(Arc::clone(&port));
        assert!(!tx.accepts(0x3F8), "nothing published yet");
        port.publish(Some(0x3F8));
        assert!(tx.accepts(0x3F8));
        assert!(!tx.accepts(0x3F9));
        for i in 0..DIRECT_TX_MAX {
            assert!(tx.accepts(0x3F8));
            tx.push(i as u8);
        }
        assert!(!tx.accepts(0x3F8), "full: the platform exit makes room");
        tx.push(0xFF);
        assert_eq!(tx.pending().len(), DIRECT_TX_MAX);
        assert_eq!(tx.pending()[1], 1);
        tx.clear();
        assert!(tx.accepts(0x3F8));
        port.publish(None);
        assert!(!tx.accepts(0x3F8));
        port.publish(Some(0));
        assert!(tx.accepts(0) && !DirectTx::default().accepts(0));
    }

    #[test]
    fn long_line_split_at_256() {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        feed(&mut lb, &[b'x'; 300], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(lb.pending(), 44);
    }
}
