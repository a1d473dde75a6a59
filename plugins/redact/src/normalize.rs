//! The normalized view of a string: what a reader (or a model) sees, written the one way the
//! detectors know. Evasions that change the bytes but not what is read are undone here:
//!
//! - Unicode compatibility forms (NFKC/NFKD: fullwidth `４１１１`, mathematical `𝟒`,
//!   ligatures, circled digits) become their plain letters and digits; combining marks
//!   are dropped (`s̈k_live` reads `sk_live`);
//! - format characters (Unicode `Cf`: zero-width space and joiners, soft hyphen, bidi
//!   controls, tag characters) and the other invisible fillers are removed;
//! - non-ASCII spaces (NBSP, thin and ideographic spaces) become a space, line and
//!   paragraph separators a newline;
//! - Cyrillic, Greek and Armenian look-alikes of Latin letters (`ѕk_lіve`, `АКІА`),
//!   decimal digits of other scripts (`٤١١١`), dashes, quotes and slashes that pass for
//!   ASCII ones become the ASCII character;
//! - escapes are decoded: `%XX` (URL, UTF-8 sequences included), HTML entities
//!   (`&#64;`, `&#x40;`, `&commat;` and the named ones for ASCII punctuation and spaces),
//!   `\uXXXX` (JSON/JS, surrogate pairs included), `\u{…}` and `\xXX`. A decoded quote or
//!   backslash from `\u`/`\x` (an escaped quote inside a JSON string) and control
//!   characters other than tab and line breaks stay encoded.
//!
//! The view keeps a map back to the original: each run of output bytes knows the input
//! bytes it came from, so a finding in the view is replaced in the original as one span —
//! every invisible character and escape inside it included. Building it is one pass over
//! the text; it is built only when the text holds something to normalize.

use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// One run of output bytes and the input bytes it came from.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Where the run starts in the output.
    at: u32,
    /// Where its source starts in the input.
    from: u32,
    /// Bytes of input.
    len_in: u32,
    /// True when the output is the input, byte for byte (so offsets inside map 1:1).
    copy: bool,
}

/// One round of normalization: the text and its map to the input.
#[derive(Debug)]
struct Round {
    segs: Vec<Seg>,
}

/// A normalized view of a string.
#[derive(Debug)]
pub struct View {
    /// The normalized text.
    pub text: String,
    /// Rounds, first to last (escapes inside escapes need more than one).
    rounds: Vec<Round>,
}

/// True when `s` holds something [`View::build`] would change: a non-ASCII character, or an
/// escape it decodes. One pass, no allocation.
pub fn needed(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..]
        .iter()
        .position(|c| *c >= 0x80 || matches!(c, b'%' | b'&' | b'\\'))
    {
        i += off;
        if b[i] >= 0x80 || escape(s, i).is_some() {
            return true;
        }
        i += 1;
    }
    false
}

impl View {
    /// The view of `s` after up to `rounds` rounds of escape decoding (at least one round of
    /// Unicode normalization); `None` when nothing changes.
    pub fn build(s: &str, rounds: u8) -> Option<View> {
        let mut view = View {
            text: String::new(),
            rounds: Vec::new(),
        };
        let mut decode = rounds > 0;
        let (text, round, decoded) = normalize(s, decode)?;
        view.text = text;
        view.rounds.push(round);
        let mut left = rounds.saturating_sub(1);
        // Another round only for what the last one decoded into a new escape (`%2541`).
        decode = decoded;
        while decode && left > 0 && needed_escape(&view.text) {
            let Some((text, round, decoded)) = normalize(&view.text, true) else {
                break;
            };
            view.text = text;
            view.rounds.push(round);
            decode = decoded;
            left -= 1;
        }
        Some(view)
    }

    /// The span of the input that `start..end` of the view came from.
    pub fn source(&self, mut start: usize, mut end: usize) -> (usize, usize) {
        for round in self.rounds.iter().rev() {
            (start, end) = round.source(start, end);
        }
        (start, end)
    }
}

impl Round {
    fn seg(&self, p: usize) -> Option<&Seg> {
        let i = self.segs.partition_point(|s| s.at as usize <= p);
        self.segs.get(i.checked_sub(1)?)
    }

    fn source(&self, start: usize, end: usize) -> (usize, usize) {
        let s = match self.seg(start) {
            Some(seg) if seg.copy => seg.from as usize + (start - seg.at as usize),
            Some(seg) => seg.from as usize,
            None => start,
        };
        let e = match self.seg(end.saturating_sub(1).max(start)) {
            Some(seg) if seg.copy => seg.from as usize + (end - seg.at as usize),
            Some(seg) => (seg.from + seg.len_in) as usize,
            None => end,
        };
        (s, e.max(s))
    }
}

fn needed_escape(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|c| matches!(c, b'%' | b'&' | b'\\')) {
        i += off;
        if escape(s, i).is_some() {
            return true;
        }
        i += 1;
    }
    false
}

/// Builds the output and the map of one round; `None` when the output equals the input.
fn normalize(s: &str, decode: bool) -> Option<(String, Round, bool)> {
    let mut out = Out {
        text: String::with_capacity(s.len()),
        segs: Vec::new(),
        changed: false,
    };
    let b = s.as_bytes();
    let mut decoded = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x80 && !(decode && matches!(c, b'%' | b'&' | b'\\')) {
            let run = b[i..]
                .iter()
                .position(|c| *c >= 0x80 || (decode && matches!(c, b'%' | b'&' | b'\\')))
                .map_or(b.len(), |n| i + n.max(1));
            out.copy(s, i, run);
            i = run;
            continue;
        }
        if decode && let Some((ch, len)) = escape(s, i) {
            out.unit(i, len, ch, false);
            decoded = true;
            i += len;
            continue;
        }
        let Some(ch) = s[i..].chars().next() else {
            break;
        };
        out.unit(i, ch.len_utf8(), ch, true);
        i += ch.len_utf8();
    }
    if !out.changed {
        return None;
    }
    Some((out.text, Round { segs: out.segs }, decoded))
}

struct Out {
    text: String,
    segs: Vec<Seg>,
    changed: bool,
}

impl Out {
    /// Copies `s[from..to]` unchanged.
    fn copy(&mut self, s: &str, from: usize, to: usize) {
        let at = self.text.len();
        match self.segs.last_mut() {
            Some(last)
                if last.copy
                    && (last.at + last.len_in) as usize == at
                    && (last.from + last.len_in) as usize == from =>
            {
                last.len_in += (to - from) as u32;
            }
            _ => self.segs.push(Seg {
                at: at as u32,
                from: from as u32,
                len_in: (to - from) as u32,
                copy: true,
            }),
        }
        self.text.push_str(&s[from..to]);
    }

    /// Writes what `ch`, read from `len` input bytes at `from`, normalizes to. `literal`:
    /// the input is `ch` itself (not an escape).
    fn unit(&mut self, from: usize, len: usize, ch: char, literal: bool) {
        let at = self.text.len();
        fold(ch, &mut |c| self.text.push(c));
        let written = &self.text[at..];
        if literal && written.len() == len && written.chars().eq(std::iter::once(ch)) {
            // Unchanged: extend the copy run (no map entry per character).
            self.text.truncate(at);
            let mut buf = [0; 4];
            let s = ch.encode_utf8(&mut buf);
            let text_len = self.text.len();
            match self.segs.last_mut() {
                Some(last)
                    if last.copy
                        && (last.at + last.len_in) as usize == text_len
                        && (last.from + last.len_in) as usize == from =>
                {
                    last.len_in += len as u32;
                }
                _ => self.segs.push(Seg {
                    at: text_len as u32,
                    from: from as u32,
                    len_in: len as u32,
                    copy: true,
                }),
            }
            self.text.push_str(s);
            return;
        }
        self.changed = true;
        if self.text.len() > at {
            self.segs.push(Seg {
                at: at as u32,
                from: from as u32,
                len_in: len as u32,
                copy: false,
            });
        }
    }
}

/// Writes the normalized form of `c` (nothing for an invisible character).
fn fold(c: char, emit: &mut impl FnMut(char)) {
    if c.is_ascii() {
        emit(c);
        return;
    }
    if let Some(s) = space(c) {
        emit(s);
        return;
    }
    if invisible(c) {
        return;
    }
    decompose_compatible(c, |d| {
        if d.is_ascii() {
            emit(d);
        } else if let Some(s) = space(d) {
            emit(s);
        } else if is_combining_mark(d) || invisible(d) {
        } else {
            emit(lookalike(d).unwrap_or(d));
        }
    });
}

/// Non-ASCII white space: line and paragraph separators read as a line break, the rest
/// (NBSP, en/em/thin/ideographic spaces) as a space.
fn space(c: char) -> Option<char> {
    match c {
        '\u{85}' | '\u{2028}' | '\u{2029}' => Some('\n'),
        c if c.is_whitespace() => Some(' '),
        _ => None,
    }
}

/// Characters that show nothing: format characters (`Cf`: zero-width space, joiners, word
/// joiner, soft hyphen, BOM, bidi controls, tags) and the blank fillers that are letters
/// or symbols by category (Hangul fillers, braille blank).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}' | '\u{034F}'
    ) || get_general_category(c) == GeneralCategory::Format
}

/// The ASCII character `c` passes for, if any: Cyrillic, Greek and Armenian letters shaped
/// like Latin ones, decimal digits of other scripts, dashes, quotes, slashes, colons.
fn lookalike(c: char) -> Option<char> {
    let ascii = match c {
        // Cyrillic
        'а' => 'a',
        'е' => 'e',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'у' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'і' => 'i',
        'ј' => 'j',
        'һ' => 'h',
        'ԁ' => 'd',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ӏ' => 'l',
        'ү' => 'y',
        'к' => 'k',
        'м' => 'm',
        'т' => 't',
        'в' => 'b',
        'н' => 'h',
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'У' => 'Y',
        'Ү' => 'Y',
        'Ѕ' => 'S',
        'І' => 'I',
        'Ј' => 'J',
        'Ԛ' => 'Q',
        'Ԝ' => 'W',
        'Ӏ' => 'I',
        'Ԁ' => 'D',
        // Greek
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        'α' => 'a',
        'ο' => 'o',
        'ν' => 'v',
        'ρ' => 'p',
        'ι' => 'i',
        'κ' => 'k',
        'χ' => 'x',
        'ϲ' => 'c',
        'ϳ' => 'j',
        'Ϲ' => 'C',
        // Armenian and Latin extensions
        'օ' => 'o',
        'ս' => 'u',
        'ց' => 'g',
        'ı' => 'i',
        'ȷ' => 'j',
        'ɡ' => 'g',
        'ɑ' => 'a',
        'ʟ' => 'L',
        // Punctuation
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{2043}' | '\u{FE58}' => '-',
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' | '\u{02BC}' => '\'',
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' => '"',
        '\u{2044}' | '\u{2215}' | '\u{29F8}' => '/',
        '\u{2236}' | '\u{A789}' | '\u{02D0}' => ':',
        '\u{02CD}' | '\u{2017}' => '_',
        '\u{2024}' | '\u{3002}' | '\u{FF61}' => '.',
        _ => return digit(c),
    };
    Some(ascii)
}

/// A decimal digit of another script (Arabic-Indic `٤`, Devanagari `४`, …) as an ASCII
/// digit. Unicode encodes each script's digits as ten consecutive code points, zero first.
fn digit(c: char) -> Option<char> {
    if get_general_category(c) != GeneralCategory::DecimalNumber {
        return None;
    }
    let mut n = 0u32;
    let mut cp = u32::from(c);
    while n < 60
        && let Some(prev) = cp.checked_sub(1).and_then(char::from_u32)
        && get_general_category(prev) == GeneralCategory::DecimalNumber
    {
        n += 1;
        cp -= 1;
    }
    char::from_digit(n % 10, 10)
}

/// The escape at byte `i` of `s`, if one starts there: the character it stands for and its
/// length in bytes.
pub fn escape(s: &str, i: usize) -> Option<(char, usize)> {
    let b = s.as_bytes();
    let (c, len, strict) = match *b.get(i)? {
        b'%' => percent(b, i)?,
        b'&' => entity(s, i)?,
        b'\\' => backslash(b, i)?,
        _ => return None,
    };
    let control = c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    // From a backslash escape, a quote or backslash is an escaped delimiter: decoding it
    // would end the string it sits in.
    let delimiter = strict && matches!(c, '"' | '\'' | '\\');
    (!control && !delimiter).then_some((c, len))
}

fn hex(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = b.get(at..at + n)?;
    digits.iter().try_fold(0u32, |acc, d| {
        let v = char::from(*d).to_digit(16)?;
        Some(acc * 16 + v)
    })
}

/// `%XX`, or a UTF-8 sequence of them (`%C3%A9`).
fn percent(b: &[u8], i: usize) -> Option<(char, usize, bool)> {
    let first = u8::try_from(hex(b, i + 1, 2)?).ok()?;
    let n = match first {
        0x00..=0x7F => return Some((char::from(first), 3, false)),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let mut bytes = [first, 0, 0, 0];
    for (k, byte) in bytes.iter_mut().enumerate().take(n).skip(1) {
        let at = i + 3 * k;
        if b.get(at) != Some(&b'%') {
            return None;
        }
        *byte = u8::try_from(hex(b, at + 1, 2)?).ok()?;
    }
    let c = std::str::from_utf8(&bytes[..n]).ok()?.chars().next()?;
    Some((c, 3 * n, false))
}

/// `\uXXXX` (a surrogate pair as two), `\u{X…}`, `\xXX`.
fn backslash(b: &[u8], i: usize) -> Option<(char, usize, bool)> {
    match *b.get(i + 1)? {
        b'u' if b.get(i + 2) == Some(&b'{') => {
            let close = b
                .get(i + 3..(i + 10).min(b.len()))?
                .iter()
                .position(|c| *c == b'}')?;
            if close == 0 {
                return None;
            }
            let c = char::from_u32(hex(b, i + 3, close)?)?;
            Some((c, close + 4, true))
        }
        b'u' => {
            let unit = hex(b, i + 2, 4)?;
            if (0xD800..0xDC00).contains(&unit) {
                if b.get(i + 6) != Some(&b'\\') || b.get(i + 7) != Some(&b'u') {
                    return None;
                }
                let low = hex(b, i + 8, 4)?;
                if !(0xDC00..0xE000).contains(&low) {
                    return None;
                }
                let c = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
                return Some((c, 12, true));
            }
            Some((char::from_u32(unit)?, 6, true))
        }
        b'x' => {
            let v = hex(b, i + 2, 2)?;
            (v < 0x80).then(|| (char::from(v as u8), 4, true))
        }
        _ => None,
    }
}

/// `&#NN;`, `&#xNN;` (the `;` may be left out, as browsers allow) and the named entities
/// of ASCII punctuation and spaces.
fn entity(s: &str, i: usize) -> Option<(char, usize, bool)> {
    let b = s.as_bytes();
    if b.get(i + 1) == Some(&b'#') {
        let (radix, at) = match b.get(i + 2) {
            Some(b'x' | b'X') => (16, i + 3),
            _ => (10, i + 2),
        };
        let n = b[at..]
            .iter()
            .take(8)
            .take_while(|c| char::from(**c).is_digit(radix))
            .count();
        if n == 0 || n > 7 {
            return None;
        }
        let v = u32::from_str_radix(&s[at..at + n], radix).ok()?;
        let c = char::from_u32(v).filter(|c| *c != '\0')?;
        let semi = usize::from(b.get(at + n) == Some(&b';'));
        return Some((c, at + n + semi - i, false));
    }
    let n = b[i + 1..]
        .iter()
        .take(12)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    if n == 0 || b.get(i + 1 + n) != Some(&b';') {
        return None;
    }
    let c = named(&s[i + 1..i + 1 + n])?;
    Some((c, n + 2, false))
}

fn named(name: &str) -> Option<char> {
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" | "ensp" | "emsp" | "thinsp" | "hairsp" | "numsp" | "puncsp" | "MediumSpace" => ' ',
        "Tab" => '\t',
        "NewLine" => '\n',
        "zwj" | "zwnj" | "shy" | "lrm" | "rlm" | "NoBreak" | "ZeroWidthSpace" | "it"
        | "InvisibleTimes" | "ic" | "af" => '\u{200B}',
        "commat" => '@',
        "period" => '.',
        "comma" => ',',
        "colon" => ':',
        "semi" => ';',
        "lowbar" | "UnderBar" => '_',
        "hyphen" | "dash" | "minus" => '-',
        "sol" => '/',
        "bsol" => '\\',
        "plus" => '+',
        "equals" => '=',
        "num" => '#',
        "percnt" => '%',
        "excl" => '!',
        "quest" => '?',
        "dollar" => '$',
        "ast" | "midast" => '*',
        "lpar" => '(',
        "rpar" => ')',
        "lsqb" | "lbrack" => '[',
        "rsqb" | "rbrack" => ']',
        "lcub" | "lbrace" => '{',
        "rcub" | "rbrace" => '}',
        "verbar" | "vert" | "VerticalLine" => '|',
        "grave" => '`',
        "Hat" => '^',
        "tilde" => '~',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        View::build(s, 3).map_or_else(|| s.to_string(), |v| v.text)
    }

    #[test]
    fn what_the_view_reads() {
        assert_eq!(norm("４１１１\u{00A0}１１１１"), "4111 1111");
        assert_eq!(norm("sk\u{200B}_li\u{200D}ve_"), "sk_live_");
        assert_eq!(norm("ѕk_lіve АКІА ghр_"), "sk_live AKIA ghp_");
        assert_eq!(norm("٤١١١ ४१११"), "4111 4111");
        assert_eq!(norm("a%40b&#46;c&#x6f;&commat;\\u0041\\x42"), "a@b.co@AB");
        assert_eq!(norm("%E2%80%8Bx&#8203;y"), "xy", "decoded, then removed");
        assert_eq!(norm("%2541"), "A", "twice encoded");
        assert_eq!(norm("\\ud83d\\ude00"), "😀");
        assert_eq!(
            norm(r#"\u0022 \" %zz &bogus; 100%"#),
            r#"\u0022 \" %zz &bogus; 100%"#
        );
        assert_eq!(norm("café"), "cafe");
        assert_eq!(norm("s\u{308}k glpat\u{2010}x ①②"), "sk glpat-x 12");
        assert!(!needed("plain ASCII with \\n and 50% off & more"));
        assert!(needed("a%41"));
        assert!(needed("é"));
    }

    #[test]
    fn spans_map_back_to_the_original() {
        let s = "key: s\u{200B}k_%6Cive_x!";
        let v = View::build(s, 3).expect("changed");
        assert_eq!(v.text, "key: sk_live_x!");
        let start = v.text.find("sk").unwrap();
        let end = v.text.find('!').unwrap();
        let (a, b) = v.source(start, end);
        assert_eq!(&s[a..b], "s\u{200B}k_%6Cive_x");
        assert_eq!(&s[..a], "key: ");
        assert_eq!(&s[b..], "!");
    }
}
