//! Client-controlled text in log lines, cut to a bounded length.
//!
//! Method names, tool names, URIs, `clientInfo.name`, header values: whatever a caller
//! chooses and a log line prints goes through [`clip`], so one request cannot write megabytes
//! of log. The cut keeps the first [`LOG_FIELD_BYTES`] bytes (on a character boundary) and
//! says how long the whole was.

use std::fmt;

/// Longest client-controlled text a log line prints.
pub const LOG_FIELD_BYTES: usize = 256;

/// `text` for a log line: as is when short, else its start and its length.
pub fn clip(text: &str) -> Clip<'_> {
    Clip(text)
}

/// See [`clip`].
#[derive(Clone, Copy)]
pub struct Clip<'a>(&'a str);

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= LOG_FIELD_BYTES {
            return f.write_str(text);
        }
        let mut end = LOG_FIELD_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..end], text.len())
    }
}

impl fmt::Debug for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.to_string().escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("tools/call").to_string(), "tools/call");
        let long = "é".repeat(1000);
        let cut = clip(&long).to_string();
        assert!(cut.ends_with("… (2000 bytes)"), "{cut}");
        assert!(cut.len() < LOG_FIELD_BYTES + 32, "{}", cut.len());
        assert_eq!(format!("{:?}", clip("a\"b")), "\"a\\\"b\"");
    }
}
