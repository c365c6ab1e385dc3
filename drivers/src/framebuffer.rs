//! Text console on the linear framebuffer the bootloader hands over.
//!
//! A person watching the machine (or a screenshot of the emulator window) sees the same
//! log as the serial port. This is pure logic over a byte slice plus [`FbInfo`], so it
//! runs in host tests: any resolution, RGB/BGR/8-bit grey (unknown formats are drawn
//! as grey in every byte of the pixel), 1 to 4 bytes per pixel, stride in pixels.
//! Text wraps at the right edge and scrolls (the rows are moved up with one memmove)
//! at the bottom. Sizes too small for one glyph, or an info that claims more memory
//! than the slice holds, draw nothing or less, never panic.
//!
//! Glyphs are Noto Sans Mono, 16 px high, pre-rendered with anti-aliasing
//! (`noto-sans-mono-bitmap`, as bootloader 0.11's own logger uses).

use core::fmt;
use noto_sans_mono_bitmap::{
    get_raster, get_raster_width, FontWeight, RasterHeight, RasterizedChar,
};

const WEIGHT: FontWeight = FontWeight::Regular;
const SIZE: RasterHeight = RasterHeight::Size16;
/// Height of one text line in pixels.
pub const LINE_HEIGHT: usize = SIZE.val();
/// Width of one character cell in pixels.
pub const CHAR_WIDTH: usize = get_raster_width(WEIGHT, SIZE);
/// Drawn for characters the font lacks.
const REPLACEMENT: char = '\u{FFFD}';
const TAB_STOP: usize = 8;

/// Layout of a pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Red, green, blue in bytes 0, 1, 2.
    Rgb,
    /// Blue, green, red in bytes 0, 1, 2.
    Bgr,
    /// One grey level per pixel.
    U8,
    /// Anything else: every byte of the pixel gets the grey level.
    Unknown,
}

/// Geometry of the framebuffer, as the bootloader describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbInfo {
    /// Visible pixels per line.
    pub width: usize,
    /// Visible lines.
    pub height: usize,
    /// Pixels from the start of one line to the start of the next (>= width).
    pub stride: usize,
    /// Bytes per pixel (1 to 4).
    pub bytes_per_pixel: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

/// A colour; converted to the framebuffer's format when drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

/// A scrolling text console drawing into `buf`.
pub struct FbConsole<'a> {
    buf: &'a mut [u8],
    info: FbInfo,
    /// Usable geometry after checking `info` against the slice.
    width: usize,
    height: usize,
    cols: usize,
    rows: usize,
    col: usize,
    row: usize,
    fg: Rgb,
    bg: Rgb,
}

impl fmt::Debug for FbConsole<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FbConsole")
            .field("info", &self.info)
            .field("cols", &self.cols)
            .field("rows", &self.rows)
            .field("cursor", &(self.col, self.row))
            .finish()
    }
}

impl<'a> FbConsole<'a> {
    /// A console over `buf` described by `info`, cleared to black, light grey text.
    pub fn new(buf: &'a mut [u8], info: FbInfo) -> Self {
        let bpp = info.bytes_per_pixel;
        let line_bytes = info.stride.saturating_mul(bpp);
        let width = if bpp == 0 {
            0
        } else {
            info.width.min(info.stride)
        };
        let height = buf
            .len()
            .checked_div(line_bytes)
            .map_or(0, |lines| info.height.min(lines));
        let mut this = Self {
            buf,
            info,
            width,
            height,
            cols: width / CHAR_WIDTH,
            rows: height / LINE_HEIGHT,
            col: 0,
            row: 0,
            fg: Rgb(0xc0, 0xc0, 0xc0),
            bg: Rgb(0, 0, 0),
        };
        this.clear();
        this
    }

    /// Text columns and rows that fit (either may be 0: then nothing is drawn).
    pub fn size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// Cursor position (column, row).
    pub fn cursor(&self) -> (usize, usize) {
        (self.col, self.row)
    }

    /// The geometry given at creation.
    pub fn info(&self) -> FbInfo {
        self.info
    }

    /// Sets the text and background colours for what is written next.
    pub fn set_colors(&mut self, fg: Rgb, bg: Rgb) {
        self.fg = fg;
        self.bg = bg;
    }

    /// Fills the visible area with the background colour and homes the cursor.
    pub fn clear(&mut self) {
        for y in 0..self.height {
            self.fill_span(y, 0, self.width, self.bg);
        }
        self.col = 0;
        self.row = 0;
    }

    /// Writes one character: `\n` starts a new line, `\r` returns to column 0, `\t`
    /// moves to the next tab stop; everything else is drawn (unknown glyphs as U+FFFD).
    pub fn write_char(&mut self, c: char) {
        if self.cols == 0 || self.rows == 0 {
            return;
        }
        match c {
            '\n' => self.newline(),
            '\r' => self.col = 0,
            '\t' => {
                let next = (self.col / TAB_STOP + 1) * TAB_STOP;
                while self.col < next.min(self.cols) {
                    self.write_char(' ');
                }
            }
            c => {
                if self.col >= self.cols {
                    self.newline();
                }
                self.draw_glyph(c, self.col, self.row);
                self.col += 1;
            }
        }
    }

    /// Writes every character of `s`.
    pub fn write_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.write_char(c));
    }

    fn newline(&mut self) {
        self.col = 0;
        if self.row + 1 < self.rows {
            self.row += 1;
        } else {
            // Scroll a third of the screen at once: every scroll reads the
            // whole framebuffer back, which is slow device memory on real
            // machines and emulators alike.
            let by = (self.rows / 3).max(1);
            self.scroll_up(by);
            self.row = self.rows - by;
        }
    }

    /// Moves the text up by `by` rows and clears the rows freed at the bottom.
    fn scroll_up(&mut self, by: usize) {
        let line_bytes = self.info.stride * self.info.bytes_per_pixel;
        let text_bytes = LINE_HEIGHT * line_bytes;
        let used = self.rows * text_bytes;
        self.buf.copy_within(by * text_bytes..used, 0);
        let first_free = (self.rows - by) * LINE_HEIGHT;
        for y in first_free..self.rows * LINE_HEIGHT {
            self.fill_span(y, 0, self.width, self.bg);
        }
    }

    fn draw_glyph(&mut self, c: char, col: usize, row: usize) {
        let Some(glyph) = raster(c) else { return };
        let x0 = col * CHAR_WIDTH;
        let y0 = row * LINE_HEIGHT;
        for (dy, line) in glyph.raster().iter().enumerate().take(LINE_HEIGHT) {
            for (dx, &level) in line.iter().enumerate().take(CHAR_WIDTH) {
                let colour = blend(self.bg, self.fg, level);
                self.put_pixel(x0 + dx, y0 + dy, colour);
            }
        }
    }

    fn fill_span(&mut self, y: usize, x0: usize, x1: usize, colour: Rgb) {
        for x in x0..x1 {
            self.put_pixel(x, y, colour);
        }
    }

    fn put_pixel(&mut self, x: usize, y: usize, colour: Rgb) {
        if x >= self.width || y >= self.height {
            return;
        }
        let bpp = self.info.bytes_per_pixel;
        let at = (y * self.info.stride + x) * bpp;
        let Some(pixel) = self.buf.get_mut(at..at + bpp) else {
            return;
        };
        encode(self.info.format, colour, pixel);
    }
}

impl fmt::Write for FbConsole<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        FbConsole::write_str(self, s);
        Ok(())
    }
}

/// The glyph for `c`, else U+FFFD, else `'?'` (basic Latin is always built in).
fn raster(c: char) -> Option<RasterizedChar> {
    get_raster(c, WEIGHT, SIZE)
        .or_else(|| get_raster(REPLACEMENT, WEIGHT, SIZE))
        .or_else(|| get_raster('?', WEIGHT, SIZE))
}

/// `bg` blended towards `fg` by `level` / 255 (the glyph's anti-aliasing intensity).
fn blend(bg: Rgb, fg: Rgb, level: u8) -> Rgb {
    let mix =
        |b: u8, f: u8| ((b as u32 * (255 - level as u32) + f as u32 * level as u32) / 255) as u8;
    Rgb(mix(bg.0, fg.0), mix(bg.1, fg.1), mix(bg.2, fg.2))
}

fn grey(c: Rgb) -> u8 {
    ((c.0 as u32 * 77 + c.1 as u32 * 150 + c.2 as u32 * 29) >> 8) as u8
}

/// Writes `c` into one pixel's bytes in `format`.
fn encode(format: PixelFormat, c: Rgb, pixel: &mut [u8]) {
    match (format, pixel) {
        (PixelFormat::Rgb, [r, g, b, rest @ ..]) => {
            (*r, *g, *b) = (c.0, c.1, c.2);
            rest.fill(0);
        }
        (PixelFormat::Bgr, [b, g, r, rest @ ..]) => {
            (*r, *g, *b) = (c.0, c.1, c.2);
            rest.fill(0);
        }
        (PixelFormat::U8, [y, rest @ ..]) => {
            *y = grey(c);
            rest.fill(0);
        }
        // Unknown layouts, or RGB/BGR with fewer than 3 bytes: grey in every byte.
        (_, pixel) => pixel.fill(grey(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn info(width: usize, height: usize, bpp: usize, format: PixelFormat) -> FbInfo {
        FbInfo {
            width,
            height,
            stride: width + 3,
            bytes_per_pixel: bpp,
            format,
        }
    }

    fn buffer(i: &FbInfo) -> Vec<u8> {
        vec![0xAA; i.stride * i.height * i.bytes_per_pixel]
    }

    /// Bytes of the text cell (col, row), row by row.
    fn cell(buf: &[u8], i: &FbInfo, col: usize, row: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for y in row * LINE_HEIGHT..(row + 1) * LINE_HEIGHT {
            let start = (y * i.stride + col * CHAR_WIDTH) * i.bytes_per_pixel;
            out.extend_from_slice(&buf[start..start + CHAR_WIDTH * i.bytes_per_pixel]);
        }
        out
    }

    fn lit(cell: &[u8]) -> usize {
        cell.iter().filter(|&&b| b != 0).count()
    }

    #[test]
    fn glyph_metrics_are_sane() {
        assert_eq!(LINE_HEIGHT, 16);
        assert!((6..=10).contains(&CHAR_WIDTH));
    }

    #[test]
    fn new_clears_visible_area_only() {
        let i = info(40, 20, 4, PixelFormat::Bgr);
        let mut buf = buffer(&i);
        FbConsole::new(&mut buf, i);
        for y in 0..20 {
            let line = &buf[y * i.stride * 4..(y + 1) * i.stride * 4];
            assert!(line[..40 * 4].iter().all(|&b| b == 0));
            assert!(
                line[40 * 4..].iter().all(|&b| b == 0xAA),
                "padding beyond width touched"
            );
        }
    }

    #[test]
    fn char_lands_in_its_cell() {
        let i = info(CHAR_WIDTH * 10, LINE_HEIGHT * 4, 4, PixelFormat::Rgb);
        let mut buf = buffer(&i);
        let mut con = FbConsole::new(&mut buf, i);
        con.write_str("A");
        assert_eq!(con.cursor(), (1, 0));
        con.write_str("\n B");
        assert_eq!(con.cursor(), (2, 1));
        assert!(lit(&cell(&buf, &i, 0, 0)) > 10, "'A' drew nothing");
        assert_eq!(lit(&cell(&buf, &i, 1, 0)), 0);
        assert_eq!(lit(&cell(&buf, &i, 0, 1)), 0, "space drew pixels");
        assert!(
            lit(&cell(&buf, &i, 1, 1)) > 10,
            "'B' drew nothing in its cell"
        );
        assert_ne!(cell(&buf, &i, 0, 0), cell(&buf, &i, 1, 1));
    }

    #[test]
    fn pixel_formats_encode_colours() {
        let mut p = [0u8; 4];
        encode(PixelFormat::Rgb, Rgb(1, 2, 3), &mut p);
        assert_eq!(p, [1, 2, 3, 0]);
        encode(PixelFormat::Bgr, Rgb(1, 2, 3), &mut p);
        assert_eq!(p, [3, 2, 1, 0]);
        let mut p = [0u8; 3];
        encode(PixelFormat::Bgr, Rgb(10, 20, 30), &mut p);
        assert_eq!(p, [30, 20, 10]);
        let mut p = [0u8; 1];
        encode(PixelFormat::U8, Rgb(255, 255, 255), &mut p);
        assert_eq!(p, [255]);
        let mut p = [9u8; 2];
        encode(PixelFormat::Rgb, Rgb(255, 255, 255), &mut p);
        assert_eq!(p, [255, 255], "RGB with 2 bytes falls back to grey");
        let mut p = [0u8; 4];
        encode(PixelFormat::Unknown, Rgb(0, 0, 0), &mut p);
        assert_eq!(p, [0; 4]);
    }

    #[test]
    fn long_lines_wrap() {
        let i = info(CHAR_WIDTH * 5, LINE_HEIGHT * 3, 1, PixelFormat::U8);
        let mut buf = buffer(&i);
        let mut con = FbConsole::new(&mut buf, i);
        con.write_str("abcdefg");
        assert_eq!(con.cursor(), (2, 1));
        assert!(lit(&cell(&buf, &i, 1, 1)) > 0);
    }

    #[test]
    fn scroll_moves_content_up() {
        let i = info(CHAR_WIDTH * 4, LINE_HEIGHT * 3, 3, PixelFormat::Rgb);
        let mut before = buffer(&i);
        let mut con = FbConsole::new(&mut before, i);
        con.write_str("x\nW\n#");
        assert_eq!(con.cursor(), (1, 2));
        let mut after = buffer(&i);
        let mut con = FbConsole::new(&mut after, i);
        con.write_str("x\nW\n#\n");
        assert_eq!(con.cursor(), (0, 2));
        assert_eq!(
            cell(&after, &i, 0, 0),
            cell(&before, &i, 0, 1),
            "row 1 did not move to row 0"
        );
        assert_eq!(
            cell(&after, &i, 0, 1),
            cell(&before, &i, 0, 2),
            "row 2 did not move to row 1"
        );
        assert_ne!(cell(&after, &i, 0, 0), cell(&before, &i, 0, 0));
        assert_eq!(lit(&cell(&after, &i, 0, 2)), 0, "bottom row not cleared");
    }

    #[test]
    fn survives_ten_thousand_lines() {
        let i = info(CHAR_WIDTH * 4 + 5, LINE_HEIGHT * 3 + 7, 4, PixelFormat::Bgr);
        let mut buf = buffer(&i);
        let mut con = FbConsole::new(&mut buf, i);
        for n in 0..10_000 {
            // Up to four digits: a full row, then the newline scrolls.
            fmt::Write::write_fmt(&mut con, format_args!("{n}\n")).unwrap();
        }
        con.write_str("end");
        assert_eq!(con.cursor(), (3, 2));
        // The last line's text sits in the bottom row.
        assert!(lit(&cell(&buf, &i, 0, 2)) > 0);
        assert_eq!(lit(&cell(&buf, &i, 3, 2)), 0);
    }

    #[test]
    fn odd_sizes_never_panic() {
        let cases = [
            (3, 5, 1, PixelFormat::U8),
            (CHAR_WIDTH - 1, LINE_HEIGHT * 2, 4, PixelFormat::Rgb),
            (CHAR_WIDTH * 2, LINE_HEIGHT - 1, 2, PixelFormat::Unknown),
            (0, 0, 4, PixelFormat::Bgr),
            (CHAR_WIDTH, LINE_HEIGHT, 3, PixelFormat::Bgr),
            (CHAR_WIDTH * 3 + 1, LINE_HEIGHT + 1, 0, PixelFormat::Rgb),
        ];
        for (w, h, bpp, format) in cases {
            let i = info(w, h, bpp, format);
            let mut buf = vec![0u8; i.stride * i.height * bpp.max(1)];
            let mut con = FbConsole::new(&mut buf, i);
            for _ in 0..50 {
                con.write_str("hello\tworld\r\n\u{1F600}\n");
            }
        }
    }

    #[test]
    fn info_larger_than_buffer_is_clipped() {
        let i = FbInfo {
            width: 1024,
            height: 768,
            stride: 1024,
            bytes_per_pixel: 4,
            format: PixelFormat::Rgb,
        };
        let mut buf = vec![0u8; 1024 * 4 * (LINE_HEIGHT * 2 + 3)];
        let mut con = FbConsole::new(&mut buf, i);
        assert_eq!(con.size().1, 2);
        for _ in 0..100 {
            con.write_str("clipped\n");
        }
    }

    #[test]
    fn stride_smaller_than_width_is_clipped() {
        let i = FbInfo {
            width: 200,
            height: 40,
            stride: 100,
            bytes_per_pixel: 1,
            format: PixelFormat::U8,
        };
        let mut buf = vec![0u8; 100 * 40];
        let mut con = FbConsole::new(&mut buf, i);
        assert_eq!(con.size().0, 100 / CHAR_WIDTH);
        con.write_str("0123456789012345678901234567890");
    }
}
