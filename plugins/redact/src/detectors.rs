//! The built-in detectors: a name, a pattern, a validator and a default action each.
//!
//! Patterns are written for the lazy DFA that scans every string once for all detectors:
//! ASCII word boundaries (`(?-u:\b)`; a Unicode `\b` makes the DFA give up on non-ASCII
//! text), ASCII classes where the data is ASCII, and no unbounded run of common characters
//! that a candidate may start with (an e-mail's local part, a key name): the DFA keeps
//! reading as long as such a run could still become a longer match, so one unbounded
//! class turns a long run with many candidates into a quadratic scan. For the same reason
//! the IP address patterns read the character after the address (so a long dotted or colon
//! run yields no candidate in its middle); their validators leave it out of the finding. A capture group
//! named `value` (or `value…`) marks the part that is redacted, e.g. the secret after
//! `password=`; without one the whole match is.
//!
//! Order is priority: when two detectors match at the same position, the earlier one wins
//! (a card before a phone number, an AWS secret before a generic `secret=` assignment).

use crate::action::Action;
use crate::validate;

/// Decides whether a candidate match (haystack, start, end) is a finding, and where it ends
/// (a validator may drop a trailing part the pattern took greedily): `None` rejects it.
pub type Validator = fn(&str, usize, usize) -> Option<usize>;

/// One built-in detector.
pub struct Builtin {
    /// Its name in the configuration, the log and the audit attributes (`redact.<name>`).
    pub name: &'static str,
    /// The regular expression (regex crate syntax).
    pub pattern: &'static str,
    /// A check beyond the pattern, if any.
    pub validate: Option<Validator>,
    /// What happens to a finding unless the configuration says otherwise.
    pub action: Action,
    /// The text in `[LABEL]` unless the configuration says otherwise.
    pub label: &'static str,
    /// How values are normalised before hashing, so one value written two ways hashes alike.
    pub normalize: Normalize,
}

/// Normalisation before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Hash the text as found.
    None,
    /// Lower-case it (e-mail addresses).
    Lowercase,
    /// Keep letters and digits only, upper-cased (numbers written with separators).
    Alphanumeric,
}

/// The key names that mark a secret: in `key = value` text and, with `json-keys`, as JSON
/// object keys. Matched case-insensitively, with any prefix (`db_password`, `GITHUB_TOKEN`,
/// `clientSecret`) and an optional `key` suffix (`secret_key`).
pub const SECRET_KEY_NAMES: &str = r"[a-z0-9_.-]{0,64}(?:password|passwd|passphrase|pwd|secret|token|api[_.-]?key|apikey|access[_.-]?key|auth[_.-]?key|private[_.-]?key|credentials?)(?:[_.-]?key)?";

const fn builtin(
    name: &'static str,
    pattern: &'static str,
    validate: Option<Validator>,
    (action, label): (Action, &'static str),
    normalize: Normalize,
) -> Builtin {
    Builtin {
        name,
        pattern,
        validate,
        action,
        label,
        normalize,
    }
}

/// The secret-assignment pattern: a secret key name, `=`, `:` or `=>`, and the value. After
/// a quoted key (`"password": …`, JSON or a JSON-like dump) only a quoted value counts, so
/// `"token": 42` inside JSON text stays valid JSON; after a bare key the value may be quoted
/// or run to the next space or delimiter (`password=hunter2`).
pub fn secret_assignment_pattern() -> String {
    let quoted = |a: &str, b: &str| format!(r#""(?P<{a}>[^"\r\n]+)"|'(?P<{b}>[^'\r\n]+)'"#);
    format!(
        r#"(?i-u:(?-u:\b){SECRET_KEY_NAMES})(?-u:\b)(?:["'][ \t]*(?:=>|[:=])[ \t]*(?:{})|[ \t]*(?:=>|[:=])[ \t]*(?:{}|(?P<value5>[^ \t\r\n"',;&<>)\]}}\\]+)))"#,
        quoted("value", "value2"),
        quoted("value3", "value4"),
    )
}

/// The detectors, in priority order. `secret-assignment`'s pattern is built at run time
/// (see [`secret_assignment_pattern`]) and stands here as an empty string.
pub const BUILTINS: &[Builtin] = &[
    builtin(
        "private-key",
        r"-----BEGIN[ A-Z0-9]{0,32}PRIVATE KEY(?: BLOCK)?-----(?:(?:\r?\n|\\n)[A-Za-z-]+:[^\r\n\\]*)*[A-Za-z0-9+/=\r\n\t \\]*(?:-----END[ A-Z0-9]{0,32}PRIVATE KEY(?: BLOCK)?-----)?",
        None,
        (Action::Label, "PRIVATE_KEY"),
        Normalize::None,
    ),
    builtin(
        "jwt",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        Some(validate::jwt),
        (Action::Label, "JWT"),
        Normalize::None,
    ),
    builtin(
        "aws-access-key",
        r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?-u:\b)",
        None,
        (Action::Label, "AWS_ACCESS_KEY"),
        Normalize::None,
    ),
    builtin(
        "aws-secret-key",
        r#"(?i-u:(?-u:\b)(?:aws[_.-]?)?secret[_.-]?(?:access[_.-]?)?key)["']?[ \t]*(?:=>|[:=])[ \t]*["']?(?P<value>[A-Za-z0-9/+]{40})"#,
        Some(validate::aws_secret),
        (Action::Label, "AWS_SECRET_KEY"),
        Normalize::None,
    ),
    builtin(
        "github-token",
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?-u:\b)",
        None,
        (Action::Label, "GITHUB_TOKEN"),
        Normalize::None,
    ),
    builtin(
        "gitlab-token",
        r"(?-u:\b)gl(?:pat|dt|rt|ptt|ft|cbt|soat|oas)-[A-Za-z0-9_-]{20,}",
        None,
        (Action::Label, "GITLAB_TOKEN"),
        Normalize::None,
    ),
    builtin(
        "slack-token",
        r"(?-u:\b)(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,})|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+",
        None,
        (Action::Label, "SLACK_TOKEN"),
        Normalize::None,
    ),
    builtin(
        "stripe-key",
        r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})(?-u:\b)",
        None,
        (Action::Label, "STRIPE_KEY"),
        Normalize::None,
    ),
    builtin(
        "secret-assignment",
        "",
        None,
        (Action::Label, "SECRET"),
        Normalize::None,
    ),
    builtin(
        "email",
        r"(?-u:\b)[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,7}\.[A-Za-z]{2,24}(?-u:\b)",
        Some(validate::email),
        (Action::Label, "EMAIL"),
        Normalize::Lowercase,
    ),
    builtin(
        "iban",
        r"(?i-u:(?-u:\b)[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?-u:\b))",
        Some(validate::iban),
        (Action::Mask { keep: 4 }, "IBAN"),
        Normalize::Alphanumeric,
    ),
    builtin(
        "card",
        r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        Some(validate::card),
        (Action::Mask { keep: 4 }, "CARD"),
        Normalize::Alphanumeric,
    ),
    builtin(
        "ssn",
        r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        Some(validate::ssn),
        (Action::Mask { keep: 4 }, "SSN"),
        Normalize::Alphanumeric,
    ),
    builtin(
        "ipv6",
        r"(?:(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){1,6}:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){2,7})(?:[^0-9A-Za-z:]|$)",
        Some(validate::ipv6),
        (Action::Label, "IPV6"),
        Normalize::Lowercase,
    ),
    builtin(
        "ipv4",
        r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?:[^0-9.]|\.[^0-9]|\.?$)",
        Some(validate::ipv4),
        (Action::Label, "IPV4"),
        Normalize::None,
    ),
    builtin(
        "phone",
        r"\+[1-9](?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,7}(?-u:\b)|(?:(?-u:\b)1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|(?-u:\b)[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}(?-u:\b)|(?-u:\b)0[1-9][0-9]{0,3}(?:[ /.-][0-9]{2,8}){1,4}(?-u:\b)",
        Some(validate::phone),
        (Action::Mask { keep: 2 }, "PHONE"),
        Normalize::Alphanumeric,
    ),
];

/// The built-in detector named `name`.
pub fn find(name: &str) -> Option<(usize, &'static Builtin)> {
    BUILTINS.iter().enumerate().find(|(_, b)| b.name == name)
}

/// True when a value of detector `name` has no fixed end, so a finding that reaches the end
/// of a content item may go on in the next (a PEM key cut before its `END` line, a token, an
/// unquoted secret): e-mail addresses, numbers, addresses and fixed-length keys end where
/// they end. Custom detectors count as open-ended.
pub fn open_ended(name: &str) -> bool {
    !matches!(
        name,
        "email"
            | "iban"
            | "card"
            | "ssn"
            | "ipv6"
            | "ipv4"
            | "phone"
            | "aws-access-key"
            | "aws-secret-key"
    )
}
