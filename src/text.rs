//! Text from elsewhere (S3 servers, Secrets' owners, users) made safe to show: control characters
//! and the invisible characters that reorder a line are escaped, and the length is bounded, so
//! that no server can write escape sequences to a terminal or swell a status object.

use std::fmt::{self, Write};

/// How much of a server's message is kept; the rest is cut and counted.
pub const SERVER_MESSAGE_MAX_BYTES: usize = 256;
/// How much of a key, upload ID, marker or error code is kept where it is shown.
pub const NAME_MAX_BYTES: usize = 256;

/// `text` escaped and cut to about `max_bytes` (the escapes count towards the limit), with the
/// number of bytes left out when it was cut. Displayed lazily: nothing is allocated until shown.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    text: &'a str,
    max_bytes: usize,
}

/// `text` made safe to show, cut to about `max_bytes`.
pub fn shown(text: &str, max_bytes: usize) -> Shown<'_> {
    Shown { text, max_bytes }
}

/// `text` made safe to show and cut to the usual limit for names.
pub fn name(text: &str) -> Shown<'_> {
    shown(text, NAME_MAX_BYTES)
}

/// Escaped and cut, as an owned string.
pub fn safe(text: &str, max_bytes: usize) -> String {
    shown(text, max_bytes).to_string()
}

/// Characters shown as escapes: C0 and C1 controls, DEL, and the invisible formatting characters
/// that can make a line read differently from what it holds (bidirectional overrides and
/// isolates, zero-width characters, line and paragraph separators, the byte-order mark). The
/// backslash is escaped too, so that an escape in the output always means an escaped character,
/// and so is the double quote, so that quoted server text cannot end its own quotes.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || c == '"'
        || matches!(c,
            '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn escape(c: char, out: &mut impl Write) -> fmt::Result {
    match c {
        '\\' => out.write_str("\\\\"),
        '"' => out.write_str("\\\""),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        // One character's escape is at most 10 bytes (`\u{10ffff}`).
        let mut piece = String::with_capacity(16);
        for (index, c) in self.text.char_indices() {
            piece.clear();
            if needs_escape(c) {
                escape(c, &mut piece)?;
            } else {
                piece.push(c);
            }
            if written + piece.len() > self.max_bytes {
                let left = self.text.len() - index;
                return write!(f, "… ({left} more bytes)");
            }
            written += piece.len();
            f.write_str(&piece)?;
        }
        Ok(())
    }
}

/// The longest prefix of `text` that fits in `max` bytes without splitting a character.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max` bytes (an ellipsis included) on a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = truncate_utf8(text, max.saturating_sub(ELLIPSIS.len())).to_owned();
    cut.push_str(ELLIPSIS);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        let hostile = "a\u{1b}[31mred\u{7}\u{7f}\u{9b}2J\u{202e}txt.exe\\n\nend\r\u{2028}\"";
        let out = safe(hostile, 1024);
        assert_eq!(
            out,
            "a\\x1b[31mred\\x07\\x7f\\x9b2J\\u{202e}txt.exe\\\\n\\nend\\r\\u{2028}\\\""
        );
        assert!(
            out.chars()
                .all(|c| !needs_escape(c) || c == '\\' || c == '"')
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_counted() {
        let long = "é".repeat(1000); // 2,000 bytes
        let out = safe(&long, 256);
        assert!(out.starts_with(&"é".repeat(128)), "{out}");
        assert!(out.ends_with("… (1744 more bytes)"), "{out}");
        assert!(out.len() < 256 + 32);
        // Escapes count towards the limit.
        let escapes = "\u{1b}".repeat(100);
        let out = safe(&escapes, 40);
        assert_eq!(out, format!("{}… (90 more bytes)", "\\x1b".repeat(10)));
    }

    #[test]
    fn plain_text_passes_unchanged() {
        assert_eq!(
            safe("datasets/2026/part-0001 ✓", 256),
            "datasets/2026/part-0001 ✓"
        );
        assert_eq!(safe("", 10), "");
    }

    #[test]
    fn bounded_keeps_within_the_limit() {
        assert_eq!(bounded("short", 1024), "short");
        let cut = bounded(&"é".repeat(600), 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(truncate_utf8(&"é".repeat(600), 1023).len(), 1022);
    }
}
