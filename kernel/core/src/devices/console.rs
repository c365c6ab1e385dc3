//! Collects a VM's console output bytes into lines for the host console.
//!
//! A line is emitted on `'\n'` or when [`LINE_MAX`] bytes are pending. Bytes are
//! sanitized: printable ASCII and tab pass, `'\r'` is dropped, anything else
//! becomes `'?'`, so a guest cannot send escape sequences to the host terminal
//! and every line is valid UTF-8.

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
            b'\t' | 0x20..=0x7E => self.append(byte, &mut emit),
            _ => self.append(b'?', &mut emit),
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
        let bytes = self.buf.get(..self.len).unwrap_or(&[]);
        // Only sanitized ASCII is ever stored, so this cannot fail.
        emit(core::str::from_utf8(bytes).unwrap_or("<invalid>"));
        self.len = 0;
    }

    /// Emits pending bytes, if any (used when a VM stops).
    pub fn flush_partial(&mut self, mut emit: impl FnMut(&str)) {
        if self.len > 0 {
            self.flush(&mut emit);
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
    fn long_line_split_at_256() {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        feed(&mut lb, &[b'x'; 300], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(lb.pending(), 44);
    }
}
