//! Text that came from outside (VM names, file names, guest output) shown on a
//! terminal without letting it drive the terminal.
//!
//! A VM name such as `"\x1b[2J"` printed raw clears the screen; a guest line
//! with a carriage return or a bidirectional override can make a log line say
//! something it does not. The wrappers here implement [`core::fmt::Display`]
//! and show such characters visibly, in Rust's escape notation:
//!
//! - ASCII and C1 control characters: `\n`, `\r`, `\t`, `\0`, else `\x1b`
//!   (below 0x80) or `\u{9b}` (C1 controls);
//! - invisible formatting characters that reorder or hide text (bidirectional
//!   embeddings, overrides and isolates, zero-width characters, line and
//!   paragraph separators, the byte-order mark): `\u{202e}`;
//! - the backslash itself, as `\\`, so that escaped text is unambiguous;
//! - in [`EscapedBytes`], bytes that are not UTF-8: `\xff`.
//!
//! Everything else, non-ASCII letters included, is shown as it is.
//!
//! ```
//! use hvcore::text::Escaped;
//! assert_eq!(format!("{}", Escaped("a\x1b[2Jb")), "a\\x1b[2Jb");
//! ```

use core::fmt::{self, Write};

/// Whether `c` is shown escaped (see the module documentation).
pub fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_invisible_format(c)
}

/// Format characters that change how surrounding text is displayed or hide
/// themselves: bidirectional controls, zero-width characters, separators, BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

fn write_char_escaped(f: &mut dyn Write, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        '\0' => f.write_str("\\0"),
        c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

/// Writes `s`, escaping what [`needs_escape`]; with `keep_lines`, `'\n'`,
/// `'\t'` and a `'\r'` right before `'\n'` pass unchanged.
fn write_escaped(f: &mut dyn Write, s: &str, keep_lines: bool) -> fmt::Result {
    let mut rest = s;
    while let Some(at) = rest.find(needs_escape) {
        f.write_str(&rest[..at])?;
        let mut chars = rest[at..].chars();
        let c = chars.next().unwrap_or(' ');
        let after = chars.as_str();
        let kept = keep_lines && (c == '\n' || c == '\t' || (c == '\r' && after.starts_with('\n')));
        if kept {
            f.write_char(c)?;
        } else {
            write_char_escaped(f, c)?;
        }
        rest = after;
    }
    f.write_str(rest)
}

/// Text shown on one line: every control character is escaped, newlines too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

/// Text shown as lines (a log, a guest's output): like [`Escaped`], but
/// newlines, tabs and `"\r\n"` pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EscapedLines<'a>(pub &'a str);

impl fmt::Display for EscapedLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

/// Bytes that should be text (a serial log): UTF-8 runs are shown as
/// [`EscapedLines`], every other byte as `\xNN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EscapedBytes<'a>(pub &'a [u8]);

impl fmt::Display for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            write_escaped(f, chunk.valid(), true)?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn plain_text_passes() {
        assert_eq!(format!("{}", Escaped("alpha-1.b_c")), "alpha-1.b_c");
        assert_eq!(
            format!("{}", Escaped("bóot ünïcode 名前")),
            "bóot ünïcode 名前"
        );
        assert_eq!(format!("{}", Escaped("")), "");
    }

    #[test]
    fn terminal_controls_are_visible() {
        assert_eq!(format!("{}", Escaped("\x1b[2J\x1b[H")), "\\x1b[2J\\x1b[H");
        assert_eq!(format!("{}", Escaped("a\nb\r\tc\0")), "a\\nb\\r\\tc\\0");
        assert_eq!(format!("{}", Escaped("\x07\x08\x7f")), "\\x07\\x08\\x7f");
        // C1 controls (CSI is U+009B) and the backslash itself.
        assert_eq!(format!("{}", Escaped("\u{9b}2J")), "\\u{9b}2J");
        assert_eq!(format!("{}", Escaped("a\\x1b")), "a\\\\x1b");
    }

    #[test]
    fn invisible_reordering_characters_are_visible() {
        assert_eq!(format!("{}", Escaped("ab\u{202e}cd")), "ab\\u{202e}cd");
        assert_eq!(
            format!("{}", Escaped("\u{200b}\u{2066}\u{feff}")),
            "\\u{200b}\\u{2066}\\u{feff}"
        );
        assert!(!needs_escape('é'));
        assert!(needs_escape('\u{2028}'));
    }

    #[test]
    fn lines_keep_their_breaks_only() {
        assert_eq!(format!("{}", EscapedLines("a\r\nb\tc\n")), "a\r\nb\tc\n");
        assert_eq!(
            format!("{}", EscapedLines("over\rwrite\x1b[1A\n")),
            "over\\rwrite\\x1b[1A\n"
        );
        assert_eq!(format!("{}", EscapedLines("end\r")), "end\\r");
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        assert_eq!(
            format!("{}", EscapedBytes(b"ok\xff\xfe\x1b!\n")),
            "ok\\xff\\xfe\\x1b!\n"
        );
        assert_eq!(format!("{}", EscapedBytes("é".as_bytes())), "é");
        // A truncated multi-byte sequence.
        assert_eq!(format!("{}", EscapedBytes(&"é".as_bytes()[..1])), "\\xc3");
    }

    #[test]
    fn every_char_is_shown_without_terminal_effects() {
        // Whatever goes in, nothing that drives a terminal comes out.
        for c in (0u32..0x3_0000).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let shown = format!("{}", Escaped(c.encode_utf8(&mut buf)));
            assert!(
                shown
                    .chars()
                    .all(|o| !o.is_control() && !is_invisible_format(o)),
                "{c:?} shown as {shown:?}"
            );
        }
    }
}
