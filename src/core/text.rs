//! Text taken from the wire, made safe to log and to keep.
//!
//! The log writer prints a `%value` field raw, so a routing key, header or
//! path holding a line break or a terminal escape could forge a log line.
//! Every value that came from outside the hub is logged and audited through
//! [`Escaped`] (or [`escaped`]), which writes:
//! - `\n`, `\r`, `\t` as those two-character escapes, `\\` for a backslash;
//! - any other control or non-printing character (C0, DEL, C1, the bidi
//!   and zero-width format characters, line/paragraph separators) as
//!   `\u{XXXX}`;
//! - at most [`MAX_CHARS`] characters, then `…(+N chars)`.
//!
//! Printable text, Vietnamese included, is written unchanged.

use std::fmt;

/// The most characters of one value written before it is cut short.
pub const MAX_CHARS: usize = 200;

/// Displays a wire value escaped and cut to [`MAX_CHARS`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl<'a> Escaped<'a> {
    /// An optional value; absent is written as nothing.
    pub fn opt(s: Option<&'a str>) -> Self {
        Self(s.unwrap_or(""))
    }
}

/// `s` percent-encoded for a URL query value or path segment: every byte
/// but the unreserved `A-Z a-z 0-9 - . _ ~` as `%XX`.
pub fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `s` escaped and cut, as an owned string (for audit fields and details).
pub fn escaped(s: &str) -> String {
    Escaped(s).to_string()
}

/// `s` escaped and cut to at most `max` characters (plus the marker).
pub fn escaped_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    write_escaped(&mut out, s, max).expect("writing to a String cannot fail");
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

fn write_escaped(f: &mut impl fmt::Write, s: &str, max: usize) -> fmt::Result {
    for (written, (i, c)) in s.char_indices().enumerate() {
        if written == max {
            let rest = s[i..].chars().count();
            return write!(f, "…(+{rest} chars)");
        }
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\\' => f.write_str("\\\\")?,
            c if needs_escape(c) => write!(f, "\\u{{{:04x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, MAX_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escapes_cannot_start_a_line() {
        let forged = "envelope.000.00.31.H41\nINFO truc::admin: agency registered\r\x1b[2K\x1b[1A";
        let out = escaped(forged);
        assert!(!out.contains('\n') && !out.contains('\r') && !out.contains('\x1b'));
        assert_eq!(
            out,
            "envelope.000.00.31.H41\\nINFO truc::admin: agency registered\\r\\u{001b}[2K\\u{001b}[1A"
        );
    }

    #[test]
    fn backslash_is_escaped_so_escapes_cannot_be_faked() {
        assert_eq!(escaped("a\\nb"), "a\\\\nb");
        assert_ne!(escaped("a\\nb"), escaped("a\nb"));
    }

    #[test]
    fn printable_text_is_unchanged() {
        let s = "Sở Tư pháp: hồ sơ số 12/2026 — đã nhận";
        assert_eq!(escaped(s), s);
        assert_eq!(Escaped::opt(None).to_string(), "");
    }

    #[test]
    fn invisible_format_characters_are_shown() {
        assert_eq!(
            escaped("a\u{202E}b\u{2028}c\u{7f}\u{85}"),
            "a\\u{202e}b\\u{2028}c\\u{007f}\\u{0085}"
        );
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "x".repeat(MAX_CHARS + 50);
        let out = escaped(&long);
        assert_eq!(out, format!("{}…(+50 chars)", "x".repeat(MAX_CHARS)));
        assert_eq!(escaped(&"x".repeat(MAX_CHARS)), "x".repeat(MAX_CHARS));
        assert_eq!(escaped_max("ab\ncd", 3), "ab\\n…(+2 chars)");
    }
}
