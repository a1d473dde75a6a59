//! Checks that turn a pattern's candidate into a finding: checksums (Luhn, ISO 7064 mod 97),
//! number ranges, and the context around the match. A pattern finds what *looks like* a card
//! number; these decide whether it is one, so a 16-digit order id that fails Luhn stays.
//!
//! Every function takes the whole haystack and the match's byte range, so it can look at the
//! characters just before and after (a dotted quad inside a longer dotted version string is
//! not an IPv4 address).

use base64::Engine as _;

/// The character just before `start`, if any.
fn before(hay: &str, start: usize) -> Option<char> {
    hay.get(..start)?.chars().next_back()
}

/// The character at `end`, if any.
fn after(hay: &str, end: usize) -> Option<char> {
    hay.get(end..)?.chars().next()
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

/// True when all separators (non-alphanumeric characters) in `s` are the same character.
fn uniform_separators(s: &str) -> bool {
    let mut seps = s.chars().filter(|c| !c.is_ascii_alphanumeric());
    match seps.next() {
        None => true,
        Some(first) => seps.all(|c| c == first),
    }
}

/// The Luhn checksum (ISO/IEC 7812) over the digits of `s`.
pub fn luhn(s: &str) -> bool {
    let mut sum = 0;
    let mut count = 0;
    let all: Vec<u32> = digits(s).collect();
    for (i, d) in all.iter().rev().enumerate() {
        let d = if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            *d
        };
        sum += d;
        count += 1;
    }
    count > 0 && sum % 10 == 0
}

/// A payment card number: 13–19 digits, one kind of separator, a first digit used by card
/// networks (2–6: Mastercard, Amex/Diners/JCB, Visa, Mastercard/Maestro, Discover/UnionPay),
/// not a run of one digit, and a valid Luhn checksum.
pub fn card(hay: &str, start: usize, end: usize) -> Option<usize> {
    let s = &hay[start..end];
    let ds: Vec<u32> = digits(s).collect();
    let first = *ds.first()?;
    let ok = (13..=19).contains(&ds.len())
        && (2..=6).contains(&first)
        && ds.iter().any(|d| *d != first)
        && uniform_separators(s)
        && luhn(s);
    ok.then_some(end)
}

/// A US Social Security number `AAA-GG-SSSS`: area not 000, 666 or 900–999, group not 00,
/// serial not 0000.
pub fn ssn(hay: &str, start: usize, end: usize) -> Option<usize> {
    let ds: Vec<u32> = digits(&hay[start..end]).collect();
    if ds.len() != 9 {
        return None;
    }
    let area = ds[0] * 100 + ds[1] * 10 + ds[2];
    let group = ds[3] * 10 + ds[4];
    let serial = ds[5..].iter().fold(0, |a, d| a * 10 + d);
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(end)
}

/// IBAN lengths by country (ISO 13616 registry): country code, then length.
const IBAN_LENGTHS: &str = "\
    AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 \
    DJ27 DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 \
    HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 \
    MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 \
    RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 \
    VG24 XK20 YE30";

/// An IBAN, in any case: a registered country with its exact length, and the ISO 7064 mod-97 check
/// (the number, rearranged and with letters as 10–35, leaves remainder 1). Spaced IBANs must
/// be grouped in fours, as printed. A short last group that makes the number invalid is
/// taken for the next word (`… 0130 00 EUR`) and left out.
pub fn iban(hay: &str, start: usize, end: usize) -> Option<usize> {
    if iban_ok(&hay[start..end]) {
        return Some(end);
    }
    let s = &hay[start..end];
    let (head, last) = s.rsplit_once(' ')?;
    (last.len() < 4 && iban_ok(head)).then_some(start + head.len())
}

fn iban_ok(s: &str) -> bool {
    if s.contains(' ') && s.split(' ').rev().skip(1).any(|g| g.len() != 4) {
        return false;
    }
    // Case does not matter: `de89 3704 …` is the same account as `DE89 3704 …`.
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    let Some(country) = compact.get(..2).and_then(|c| std::str::from_utf8(c).ok()) else {
        return false;
    };
    let len = IBAN_LENGTHS
        .split(' ')
        .find(|e| e.starts_with(country))
        .and_then(|e| e.get(2..)?.parse::<usize>().ok());
    if len != Some(compact.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// An IPv4 address in dotted-quad form: four decimal octets 0–255 without leading zeros, and
/// not part of a longer dotted number (`1.2.3.4.5`, an SNMP OID).
pub fn ipv4(hay: &str, start: usize, end: usize) -> Option<usize> {
    // The pattern reads one character (or a dot and one) past the address.
    let s = hay[start..end].trim_end_matches(|c: char| !c.is_ascii_digit());
    let end = start + s.len();
    let octets_ok = s.split('.').all(|o| {
        !o.is_empty()
            && (o == "0" || !o.starts_with('0'))
            && o.parse::<u16>().is_ok_and(|n| n <= 255)
    });
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    let dotted_before = before(hay, start) == Some('.') && digit(before(hay, start - 1));
    let dotted_after = after(hay, end) == Some('.') && digit(after(hay, end + 1));
    (octets_ok && !dotted_before && !dotted_after).then_some(end)
}

/// An IPv6 address as `std::net` parses it (compressed forms and an IPv4 tail included),
/// with at least two non-empty groups one of which has three or more hex digits — so `::`,
/// `a::b` (a C++ or Rust path) and `12:30:45` (a time) are not addresses — and not glued to
/// a longer word.
pub fn ipv6(hay: &str, start: usize, end: usize) -> Option<usize> {
    // The pattern reads the character after the address.
    let s = hay[start..end].trim_end_matches(|c: char| !(c.is_ascii_hexdigit() || c == ':'));
    let end = start + s.len();
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':');
    if glued(before(hay, start)) || glued(after(hay, end)) {
        return None;
    }
    let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
    let ok = groups.len() >= 2
        && groups.iter().any(|g| g.len() >= 3)
        && s.parse::<std::net::Ipv6Addr>().is_ok();
    ok.then_some(end)
}

/// A phone number. International (`+…`): 8–15 digits (E.164); trailing groups that push it
/// over 15 are taken for a following number and left out. National with a trunk `0`: 9–12
/// digits and one kind of separator (so `03.04.2024 10` is a date and an hour). North
/// American: exactly 10 digits, or 11 with the country code 1.
pub fn phone(hay: &str, start: usize, end: usize) -> Option<usize> {
    if before(hay, start).is_some_and(|c| c.is_ascii_digit() || c == '+') {
        return None;
    }
    let mut s = &hay[start..end];
    match s.as_bytes().first() {
        Some(b'+') => {
            while digits(s).count() > 15 {
                let cut = s.rfind(|c: char| !c.is_ascii_digit())?;
                s = s[..cut].trim_end_matches([' ', '.', '-', '(', ')']);
            }
            (digits(s).count() >= 8 && s.ends_with(|c: char| c.is_ascii_digit()))
                .then_some(start + s.len())
        }
        Some(b'0') => {
            ((9..=12).contains(&digits(s).count()) && uniform_separators(s)).then_some(end)
        }
        _ => {
            let n = digits(s).count();
            (n == 10 || (n == 11 && s.starts_with('1'))).then_some(end)
        }
    }
}

/// An e-mail address: a local part of at most 64 characters that does not start or end with
/// a dot nor hold two in a row, and a domain of at most 253 characters whose labels do not
/// start or end with a hyphen.
pub fn email(hay: &str, start: usize, end: usize) -> Option<usize> {
    let local_char = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    if before(hay, start).is_some_and(local_char) {
        // The pattern takes at most 64 characters before the `@`: this is the tail of a
        // longer run, not an address.
        return None;
    }
    let (local, domain) = hay[start..end].rsplit_once('@')?;
    let ok = local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    ok.then_some(end)
}

/// A JWT (JWS compact form): the first segment is base64url of a JSON object with an `alg`.
pub fn jwt(hay: &str, start: usize, end: usize) -> Option<usize> {
    let header = hay[start..end].split('.').next()?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    header.get("alg")?.is_string().then_some(end)
}

/// A 40-character AWS secret access key: not the start of a longer base64 run.
pub fn aws_secret(hay: &str, _start: usize, end: usize) -> Option<usize> {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '/' || c == '+';
    (!after(hay, end).is_some_and(b64)).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(f: fn(&str, usize, usize) -> Option<usize>, s: &str) -> bool {
        f(s, 0, s.len()) == Some(s.len())
    }

    #[test]
    fn checksums() {
        assert!(luhn("4111111111111111"));
        assert!(!luhn("4111111111111112"));
        assert!(whole(card, "4111 1111 1111 1111"));
        assert!(!whole(card, "4111 1111-1111 1111"), "mixed separators");
        assert!(
            !whole(card, "0000000000000000"),
            "all zeros pass Luhn but are no card"
        );
        assert!(whole(iban, "DE89370400440532013000"));
        assert!(whole(iban, "GB82 WEST 1234 5698 7654 32"));
        assert!(!whole(iban, "GB82 WEST 1234 5698 7654 33"));
        assert!(!whole(iban, "DE8937040044053201300"), "wrong length for DE");
        assert!(whole(iban, "de89 3704 0044 0532 0130 00"), "lower case");
        assert!(!whole(iban, "de89 3704 0044 0532 0130 01"));
    }

    #[test]
    fn context_matters() {
        assert_eq!(
            ipv4("at 10.0.0.1.", 3, 12),
            Some(11),
            "the dot after it is not part of it"
        );
        assert_eq!(
            ipv4("v1.10.0.0.1", 3, 11),
            None,
            "inside a longer dotted number"
        );
        let spaced = "BE68 5390 0754 7034 EUR";
        assert_eq!(
            iban(spaced, 0, spaced.len()),
            Some(19),
            "the next word is left out"
        );
        let call = "+44 20 7946 0958 123456";
        assert_eq!(
            phone(call, 0, call.len()),
            Some(16),
            "so is a following number"
        );
        assert!(!whole(ipv4, "999.1.1.1"));
        assert!(!whole(ipv4, "01.2.3.4"));
        assert!(whole(ipv6, "2001:db8::8a2e:370:7334"));
        assert!(!whole(ipv6, "a::b"));
        assert!(!whole(ipv6, "12:30:45"));
    }
}
