//! Warming the scan at `init`, so a pre-initialized instance starts with it warm.
//!
//! The detectors run on regex-automata's lazy DFA: it builds its states as the text it reads
//! needs them, and keeps them in a cache that lives as long as the instance. A warm instance
//! builds them once; a fresh one, even pre-initialized (the gateway's default: a new instance
//! per call made from the state `init` left), used to start from an empty cache and build
//! every state each call reads — measured at about 800 µs of a ~20 µs call.
//!
//! So `init` ends by scanning a sample of what tools return: prose, JSON, identifiers,
//! numbers, dates, addresses, URLs, non-ASCII text, escapes and encoded runs, with a finding
//! of every built-in detector in it (forward and reverse states, and the all-matches regex
//! a rejected candidate consults). The states that sample visits are the ones most calls
//! visit; they are in the snapshot the gateway takes after `init`, shared copy-on-write by
//! every instance made from it. Nothing of the sample is kept but the caches: the scanner,
//! its findings and counts are dropped. The states are a function of the detectors alone,
//! never of anything a caller sent.

use serde_json::{Value, json};

use crate::config::Config;
use crate::scan::Scanner;

/// Prose, logs and listings of the kind tools return, with one finding of each detector.
const TEXT: &[&str] = &[
    "Ticket 4711 was opened by alice@example.com from the support portal; the build finished in 42 s and the report is attached below for review.",
    "Hello Bob, thanks for the quick reply! The meeting is on 2024-03-15 at 10:30 (UTC+1), room B-204. Call me at +1 415 555 0132 or (212) 555-0198.",
    "Order #A-99812, total: $1,249.99 (VAT 19%), paid with card 4111 1111 1111 1111 on 12/03/2024; refund id RF-2024-000123, invoice no. 0042/2024.",
    "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX. SSN 078-05-1120. Server 192.168.10.24:8080 and 2001:db8::8a2e:370:7334 answered in 12.5 ms.",
    "2024-06-01T12:34:56.789Z INFO  [worker-3] GET /api/v1/users?page=2&limit=50 200 OK 1532 bytes in 3.2ms user_id=8f14e45f-ceea-467f-a0e6-1b2c3d4e5f60",
    "ERROR db.pool: connection refused (os error 111) at src/db/pool.rs:88:17; retrying in 5000ms, attempt 3/10, host=db-primary.internal port=5432",
    "password=hunter2 api_key: \"sk_live_51HqLyjWDarjtT1zdp7dcXYZabc\" token='ghp_1234567890abcdefghijklmnopqrstuvwxyzAB' aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAIOSFODNN7EXAMPLE glpat-xxxxxxxxxxxxxxxxxxxx xoxb-123456789012-abcdefghijkl https://hooks.slack.com/services/T000/B000/XXXX whsec_abcdefghijklmnopqrstuvwx",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * 2).collect(); println!(\"{:?}\", v); } // see https://docs.rs/regex/1.10.0/regex/ and README.md",
    "Résumé of Zoë Müller, São Paulo — naïve café owner; 東京都渋谷区 1-2-3; Привет мир; emoji ✅🚀; ｆｕｌｌ ｗｉｄｔｈ １２３",
    "Encoded: YWxpY2VAZXhhbXBsZS5jb20gcGFzc3dvcmQ9aHVudGVyMg== hex 616c696365406578616d706c652e636f6d url %61lice%40example.com &#97;lice\\u0040example.com",
    "commit 3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39 Merge pull request #1234 from team/feature-x; 17 files changed, 342 insertions(+), 28 deletions(-)",
    "| id | name | status | updated |\n|---:|------|--------|---------|\n| 1 | alpha | OK | 2024-01-02 |\n| 22 | beta-2 | FAILED | 2023-12-31 |\n",
    "Call 020 7946 0958 or 01632 960983; card 5500-0000-0000-0004; not a card 1234567812345678; version 10.0.19045.3693; ratio 3.14159265358979",
];

/// Scans the sample with `config`'s detectors; called at the end of `init`.
pub fn warm(config: &Config) {
    let mut scan = Scanner::new(config);
    // Each text alone: joined as adjacent content items they would be scanned twice, for
    // few new states.
    let mut texts = Value::Array(TEXT.iter().map(|s| Value::from(*s)).collect());
    scan.value(&mut texts);
    let mut structured: Value = json!({
        "id": 42,
        "name": "build-7 finished",
        "owner": { "email": "bob.smith@example.org", "phone": "+44 20 7946 0958" },
        "password": "correct horse battery staple",
        "client_secret": "s3cr3t-v4lue",
        "items": [
            { "sku": "X-100", "qty": 3, "price": 19.99, "note": "ships 2024-07-01 from 10.0.0.1" },
            { "sku": "Y-200", "qty": 1, "price": 5, "note": "ok" }
        ],
        "url": "https://example.com/a/b?c=d&e=f#g",
        "ok": true
    });
    scan.value(&mut structured);
}
