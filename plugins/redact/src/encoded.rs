//! Base64 and hex runs: text hidden by encoding it. A run of base64 (standard or URL-safe)
//! or hex characters at least `encoded-min-length` long is decoded; when the bytes are
//! text (valid UTF-8 without control characters other than tab and line breaks) the text
//! is scanned like any other, and a finding in it replaces the characters of the run that
//! encode it (whole base64 quanta, whole hex pairs). Random tokens, hashes and binary data
//! decode to bytes that are not text, so they cost one decoding and change nothing.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A decoded run.
pub struct Run {
    /// Where the run is in the text it was found in.
    pub start: usize,
    /// The decoded text.
    pub text: String,
    /// Characters of the run per group of decoded bytes: 4 per 3 (base64) or 2 per 1 (hex).
    chars: usize,
    bytes: usize,
    /// The run's length.
    len: usize,
}

impl Run {
    /// Where the run ends.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// The span of the run (in the text it was found in) that encodes `start..end` of the
    /// decoded text.
    pub fn source(&self, start: usize, end: usize) -> (usize, usize) {
        let a = start / self.bytes * self.chars;
        let b = end.div_ceil(self.bytes) * self.chars;
        (self.start + a, self.start + b.min(self.len))
    }
}

fn base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Every run in `s` of at least `min` characters whose decoding is text, left to right.
pub fn runs(s: &str, min: usize) -> impl Iterator<Item = Run> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let Some(off) = b[i..].iter().position(|c| base64_char(*c)) else {
                i = b.len();
                break;
            };
            let start = i + off;
            let mut end = start
                + b[start..]
                    .iter()
                    .position(|c| !base64_char(*c))
                    .unwrap_or(b.len() - start);
            let body = end;
            while end < b.len() && end - body < 2 && b[end] == b'=' {
                end += 1;
            }
            i = end.max(start + 1);
            if body - start < min {
                continue;
            }
            if let Some(run) = decode(&s[start..body], start, end - start) {
                return Some(run);
            }
        }
        None
    })
}

fn decode(body: &str, start: usize, len: usize) -> Option<Run> {
    let b = body.as_bytes();
    let hexadecimal = b.len().is_multiple_of(2) && b.iter().all(u8::is_ascii_hexdigit);
    let (bytes, chars, per) = if hexadecimal {
        let bytes: Vec<u8> = b
            .chunks_exact(2)
            .map(|pair| {
                let hi = char::from(pair[0]).to_digit(16).unwrap_or(0);
                let lo = char::from(pair[1]).to_digit(16).unwrap_or(0);
                (hi * 16 + lo) as u8
            })
            .collect();
        (bytes, 2, 1)
    } else {
        let standard = b.iter().any(|c| matches!(c, b'+' | b'/'));
        let url = b.iter().any(|c| matches!(c, b'-' | b'_'));
        let config = GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true);
        let engine = match (standard, url) {
            (true, true) => return None,
            (false, true) => GeneralPurpose::new(&alphabet::URL_SAFE, config),
            _ => GeneralPurpose::new(&alphabet::STANDARD, config),
        };
        (engine.decode(body).ok()?, 4, 3)
    };
    let text = String::from_utf8(bytes).ok()?;
    let textual = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'));
    (textual && !text.is_empty()).then_some(Run {
        start,
        text,
        chars,
        bytes: per,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_base64_and_hex_is_found_and_mapped_back() {
        // "contact alice@example.com now" in base64, then in hex.
        let s = "a Y29udGFjdCBhbGljZUBleGFtcGxlLmNvbSBub3c= b";
        let runs: Vec<Run> = runs(s, 16).collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].text, "contact alice@example.com now");
        let at = runs[0].text.find("alice").unwrap();
        let (a, b) = runs[0].source(at, at + "alice@example.com".len());
        assert!(a >= 2 && b <= s.len() - 2 && b > a, "{a}..{b}");
        let hex = "x 616c696365406578616d706c652e636f6d y";
        let runs: Vec<Run> = super::runs(hex, 16).collect();
        assert_eq!(runs[0].text, "alice@example.com");
        assert_eq!(runs[0].source(0, 17), (2, hex.len() - 2));
    }

    #[test]
    fn random_tokens_and_numbers_are_not_text() {
        for s in [
            "7f3c9a2e-1b4d-4c8e-9f2a-6d5e4c3b2a10",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "4111111111111111",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(runs(s, 16).count(), 0, "{s}");
        }
    }
}
