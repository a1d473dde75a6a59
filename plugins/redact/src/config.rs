//! The sidecar's `[config]` table, checked and compiled into [`Config`]: every enabled
//! detector's pattern in one multi-pattern regex, built once per instance in `init`.

use std::collections::BTreeMap;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use serde::Deserialize;

use crate::action::{Action, ActionKind, Style};
use crate::detectors::{self, BUILTINS, Normalize, SECRET_KEY_NAMES, Validator};

/// The shortest salt accepted for `hash`: shorter keys make the hashes of short values
/// (phone numbers, SSNs) easy to reverse by trying every value.
pub const MIN_SALT_LEN: usize = 16;

/// `[config]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    /// The HMAC key for `hash`.
    #[serde(default)]
    salt: Option<String>,
    /// Hex digits in a hash token.
    #[serde(default = "default_hash_length")]
    hash_length: usize,
    /// The masking character.
    #[serde(default = "default_mask_char")]
    mask_char: char,
    /// Redact `tools/call` arguments on the way in.
    #[serde(default)]
    arguments: bool,
    /// Redact `notifications/progress` messages and `notifications/message` data.
    #[serde(default = "yes")]
    notifications: bool,
    /// Redact upstream JSON-RPC error messages and data.
    #[serde(default = "yes")]
    errors: bool,
    /// Redact what upstreams ask the client: sampling messages, elicitation messages.
    #[serde(default = "yes")]
    server_requests: bool,
    /// Treat the whole string value of a JSON member with a secret-looking key
    /// (`"password": "…"`) as a `secret-assignment`.
    #[serde(default = "yes")]
    json_keys: bool,
    /// Scan a normalized view too (Unicode forms, invisible characters, look-alikes,
    /// escapes, base64 and hex).
    #[serde(default = "yes")]
    normalize: bool,
    /// Layers of encoding undone, one inside another (`%2541`, base64 of hex).
    #[serde(default = "default_decode_depth")]
    decode_depth: u8,
    /// The shortest base64 or hex run decoded.
    #[serde(default = "default_encoded_min_length")]
    encoded_min_length: usize,
    /// Scan adjacent content items as one text too, for secrets cut in two.
    #[serde(default = "yes")]
    join_items: bool,
    /// Per built-in detector settings.
    #[serde(default)]
    detectors: BTreeMap<String, Settings>,
    /// Operators' own detectors.
    #[serde(default)]
    custom: Vec<Custom>,
}

fn default_hash_length() -> usize {
    8
}

fn default_decode_depth() -> u8 {
    DEFAULT_DECODE_DEPTH
}

fn default_encoded_min_length() -> usize {
    DEFAULT_ENCODED_MIN_LENGTH
}

/// `decode-depth` unless configured: escapes in escapes (`%2541`) and base64 of URL-escaped
/// text are seen; every layer shrinks the text, so even the deepest costs less than one more
/// scan of the original.
pub const DEFAULT_DECODE_DEPTH: u8 = 3;

/// The largest `decode-depth`.
pub const MAX_DECODE_DEPTH: u8 = 4;

/// `encoded-min-length` unless configured: 16 base64 characters hold 12 bytes (an SSN, a
/// short e-mail address); shorter runs are mostly words and identifiers.
pub const DEFAULT_ENCODED_MIN_LENGTH: usize = 16;

fn default_mask_char() -> char {
    '*'
}

fn yes() -> bool {
    true
}

/// `[config.detectors.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    enabled: Option<bool>,
    action: Option<ActionKind>,
    keep: Option<usize>,
    label: Option<String>,
}

/// `[[config.custom]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Custom {
    name: String,
    pattern: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    action: Option<ActionKind>,
    #[serde(default)]
    keep: Option<usize>,
    #[serde(default)]
    label: Option<String>,
}

/// One enabled detector, compiled.
#[derive(Debug)]
pub struct Detector {
    /// As in the configuration and the audit attributes.
    pub name: Box<str>,
    /// The text in `[LABEL]` and `[LABEL:hash]`.
    pub label: Box<str>,
    /// What happens to its findings.
    pub action: Action,
    /// A check beyond the pattern.
    pub validate: Option<Validator>,
    /// Normalisation before hashing.
    pub normalize: Normalize,
    /// Capture groups whose name starts with `value`: the part redacted (else the whole match).
    pub value_groups: Vec<usize>,
}

/// The configuration, compiled.
#[derive(Debug)]
pub struct Config {
    /// Enabled detectors, in priority order (custom ones first); index = pattern id.
    pub detectors: Vec<Detector>,
    /// All their patterns; `None` when every detector is off.
    pub regex: Option<Regex>,
    /// The same patterns with "all matches" semantics and no capture groups: which detectors
    /// match at a position where the first one's candidate was rejected, in one DFA run.
    /// Built on the first rejection, so a call that sees none does not pay for it.
    starts: std::cell::OnceCell<Option<Regex>>,
    /// The patterns, for `starts`.
    patterns: Vec<String>,
    /// Secret key names, matched against whole JSON keys (`json-keys`), and the detector
    /// their values count as.
    pub keys: Option<(Regex, usize)>,
    /// How replacements look.
    pub style: Style,
    /// Redact tool arguments in the request phase.
    pub arguments: bool,
    /// Redact progress and log notifications.
    pub notifications: bool,
    /// Redact upstream error responses.
    pub errors: bool,
    /// Redact sampling and elicitation requests upstreams send the client.
    pub server_requests: bool,
    /// Scan the normalized view of each string too.
    pub normalize: bool,
    /// Layers of encoding undone.
    pub decode_depth: u8,
    /// The shortest base64 or hex run decoded.
    pub encoded_min_length: usize,
    /// Scan adjacent content items as one text too.
    pub join_items: bool,
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        let config = compile(raw).map_err(serde::de::Error::custom)?;
        // Fill the lazy DFA caches now, so the snapshot the gateway takes after `init` holds
        // them (`warm.rs`).
        crate::warm::warm(&config);
        Ok(config)
    }
}

impl Config {
    /// The all-matches regex (see `starts`), built on first use; `None` if it cannot be
    /// built (then only the first detector's candidate is considered at a position).
    pub fn starts(&self) -> Option<&Regex> {
        self.starts
            .get_or_init(|| {
                builder()
                    .configure(
                        Regex::config()
                            .match_kind(regex_automata::MatchKind::All)
                            .which_captures(regex_automata::nfa::thompson::WhichCaptures::None)
                            .hybrid_cache_capacity(2 << 20)
                            .onepass(false)
                            .backtrack(false)
                            .auto_prefilter(false),
                    )
                    .build_many(&self.patterns)
                    .ok()
            })
            .as_ref()
    }
}

/// `email` → `EMAIL`, `aws-access-key` → `AWS_ACCESS_KEY`.
fn default_label(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

fn check_label(who: &str, label: &str) -> Result<(), String> {
    if label.is_empty() || label.contains(['[', ']']) {
        return Err(format!(
            "{who}: label {label:?} must be non-empty text without brackets (it is shown as [LABEL])"
        ));
    }
    Ok(())
}

fn action(
    who: &str,
    kind: Option<ActionKind>,
    keep: Option<usize>,
    default: Action,
) -> Result<Action, String> {
    let default_keep = match default {
        Action::Mask { keep } => keep,
        _ => 4,
    };
    let action = match kind {
        Some(kind) => Action::of(kind, keep, default_keep),
        None => match (default, keep) {
            (Action::Mask { .. }, Some(keep)) => Action::Mask { keep },
            _ => default,
        },
    };
    if keep.is_some() && !matches!(action, Action::Mask { .. }) {
        return Err(format!(
            "{who}: `keep` only applies to action \"mask\" (the action is {:?})",
            action.kind()
        ));
    }
    Ok(action)
}

fn value_groups(regex: &Regex, pattern: usize) -> Vec<usize> {
    let Ok(pid) = regex_automata::PatternID::new(pattern) else {
        return Vec::new();
    };
    regex
        .group_info()
        .pattern_names(pid)
        .enumerate()
        .filter(|(_, name)| name.is_some_and(|n| n.starts_with("value")))
        .map(|(i, _)| i)
        .collect()
}

fn builder() -> meta::Builder {
    let mut b = Regex::builder();
    b.syntax(syntax::Config::new().utf8(true))
        // The lazy DFA's state cache: the scan of a large result with every detector on
        // needs a few thousand states; 4 MiB keeps them without thrashing (the default
        // 2 MiB cache was measured to refill on mixed text).
        .configure(
            Regex::config()
                .hybrid_cache_capacity(4 << 20)
                // Captures are read only for the few findings with a `value` group, on a
                // span already found: the backtracker does that; building a one-pass DFA
                // for every instance would cost more than it saves.
                .onepass(false)
                // Several detectors start with a digit or a letter class, so no literal
                // prefilter can cover all of them; skip looking for one.
                .auto_prefilter(false),
        );
    b
}

fn compile(raw: Raw) -> Result<Config, String> {
    if let Some(unknown) = raw.detectors.keys().find(|k| detectors::find(k).is_none()) {
        let known: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        return Err(format!(
            "detectors.{unknown}: no such detector (built-in detectors: {})",
            known.join(", ")
        ));
    }
    if raw.decode_depth > MAX_DECODE_DEPTH {
        return Err(format!(
            "decode-depth: {} is over {MAX_DECODE_DEPTH}",
            raw.decode_depth
        ));
    }
    if !(8..=4096).contains(&raw.encoded_min_length) {
        return Err(format!(
            "encoded-min-length: {} is outside 8–4096",
            raw.encoded_min_length
        ));
    }
    if !(4..=64).contains(&raw.hash_length) {
        return Err(format!("hash-length: {} is outside 4–64", raw.hash_length));
    }

    let mut detectors = Vec::new();
    let mut patterns: Vec<String> = Vec::new();
    for (i, c) in raw.custom.iter().enumerate() {
        let who = format!("custom[{i}] ({:?})", c.name);
        let name_ok = !c.name.is_empty()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "{who}: name must be lower-case letters, digits and '-'"
            ));
        }
        if detectors::find(&c.name).is_some() || raw.custom[..i].iter().any(|o| o.name == c.name) {
            return Err(format!("{who}: the name is already taken"));
        }
        if c.enabled == Some(false) {
            continue;
        }
        let hir = syntax::parse(&c.pattern).map_err(|e| format!("{who}: pattern: {e}"))?;
        if hir.properties().minimum_len().is_none_or(|n| n == 0) {
            return Err(format!("{who}: pattern can match empty text"));
        }
        let label = c.label.clone().unwrap_or_else(|| default_label(&c.name));
        check_label(&who, &label)?;
        detectors.push(Detector {
            name: c.name.as_str().into(),
            label: label.into(),
            action: action(&who, c.action, c.keep, Action::Label)?,
            validate: None,
            normalize: Normalize::None,
            value_groups: Vec::new(),
        });
        patterns.push(c.pattern.clone());
    }
    let none = Settings::default();
    for b in BUILTINS {
        let s = raw.detectors.get(b.name).unwrap_or(&none);
        if s.enabled == Some(false) {
            continue;
        }
        let who = format!("detectors.{}", b.name);
        let label = s.label.clone().unwrap_or_else(|| b.label.to_string());
        check_label(&who, &label)?;
        detectors.push(Detector {
            name: b.name.into(),
            label: label.into(),
            action: action(&who, s.action, s.keep, b.action)?,
            validate: b.validate,
            normalize: b.normalize,
            value_groups: Vec::new(),
        });
        patterns.push(if b.name == "secret-assignment" {
            detectors::secret_assignment_pattern()
        } else {
            b.pattern.to_string()
        });
    }

    let hashing: Vec<&str> = detectors
        .iter()
        .filter(|d| d.action == Action::Hash)
        .map(|d| &*d.name)
        .collect();
    let salt = raw.salt.as_deref().unwrap_or_default();
    if !hashing.is_empty() && salt.len() < MIN_SALT_LEN {
        return Err(format!(
            "salt: detectors {} use action \"hash\", which needs a secret salt of at least {MIN_SALT_LEN} characters",
            hashing.join(", ")
        ));
    }
    let style = Style::new(raw.mask_char, salt.as_bytes(), raw.hash_length)?;

    let regex = if patterns.is_empty() {
        None
    } else {
        let regex = builder()
            .build_many(&patterns)
            .map_err(|e| format!("compiling the detectors: {e}"))?;
        for (i, d) in detectors.iter_mut().enumerate() {
            d.value_groups = value_groups(&regex, i);
        }
        Some(regex)
    };
    let keys = match detectors
        .iter()
        .position(|d| &*d.name == "secret-assignment")
    {
        Some(i) if raw.json_keys => {
            let re = builder()
                .build(&format!("(?i-u)^(?:{SECRET_KEY_NAMES})$"))
                .map_err(|e| format!("compiling the secret key names: {e}"))?;
            Some((re, i))
        }
        _ => None,
    };
    Ok(Config {
        detectors,
        regex,
        starts: std::cell::OnceCell::new(),
        patterns,
        keys,
        style,
        arguments: raw.arguments,
        notifications: raw.notifications,
        errors: raw.errors,
        server_requests: raw.server_requests,
        normalize: raw.normalize,
        decode_depth: raw.decode_depth,
        encoded_min_length: raw.encoded_min_length,
        join_items: raw.join_items,
    })
}
