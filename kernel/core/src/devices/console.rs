//! Collects a VM's console output bytes into lines for the host console.
//!
//! A line is emitted on `'\n'` or when [`LINE_MAX`] bytes are pending. Lines
//! are sanitized: printable ASCII and tab pass, `'\r'` is dropped, anything
//! else becomes `'?'`, so a guest cannot send escape sequences to the host
//! terminal and every line is valid UTF-8. An unfinished line taken by a
//! console that turns raw ([`LineBuffer::take_partial`]) keeps its bytes.

/// Longest line before a forced flush.
pub const LINE_MAX: usize = 256;

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
    fn long_line_split_at_256() {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        feed(&mut lb, &[b'x'; 300], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(lb.pending(), 44);
    }
}
