//! The sidecar's `[config]` table, read and checked into [`Config`].
//!
//! `init` runs in every fresh instance, so reading the configuration is on the per-call path.
//! Patterns are compiled while they are read (one allocation each, no intermediate strings or
//! maps), rules are ordered deny-first once, and only a configuration with a mistake is read a
//! second time, rule by rule, to say which rule is wrong.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::glob::Glob;
use crate::methods;
use crate::paths;

/// What a rule (or the default) does when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// How the gateway namespaces names (mirror of its `[namespacing] prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixMode {
    /// Every name is `<upstream><separator><name>`, every URI `<upstream>+<uri>`.
    #[default]
    Always,
    /// Only names two upstreams share are prefixed.
    WhenNeeded,
    /// Nothing is prefixed.
    Never,
}

/// The configuration, compiled.
#[derive(Debug)]
pub struct Config {
    /// What happens when no rule matches.
    pub default: Effect,
    /// Between an upstream name and an item name in client-facing names.
    pub separator: Box<str>,
    /// Which client-facing names carry an upstream prefix.
    pub prefix: PrefixMode,
    /// Deny rules first, then allow rules, each group in file order: the first rule that
    /// matches decides, which is "deny wins".
    pub rules: Vec<Rule>,
}

/// An identity attribute and the patterns its value must match (any of).
pub type Attribute = (Box<str>, Vec<Glob>);

/// One rule. `None` for a selector means "not restricted by it".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    /// As written; named in logs and attributes.
    pub name: Box<str>,
    /// Allow or deny.
    pub effect: Effect,
    /// Position in the file (for messages).
    #[serde(skip)]
    pub index: usize,
    /// Free text for operators.
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    // Who.
    #[serde(default, deserialize_with = "patterns")]
    pub roles: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub subjects: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub scopes: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub tenants: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "attributes")]
    pub attributes: Vec<Attribute>,
    // What.
    #[serde(default, deserialize_with = "patterns")]
    pub methods: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub upstreams: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub tools: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub prompts: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub resources: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "patterns")]
    pub targets: Option<Vec<Glob>>,
    #[serde(default, deserialize_with = "arguments")]
    pub arguments: Vec<(Box<str>, Condition)>,
}

impl Rule {
    /// True when the rule names tools, prompts or resources (and so applies to those kinds
    /// only).
    pub fn has_kinds(&self) -> bool {
        self.tools.is_some() || self.prompts.is_some() || self.resources.is_some()
    }
}

/// An argument condition: every operator present must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Condition {
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub starts_with: Option<Box<str>>,
    #[serde(default)]
    pub matches: Option<Glob>,
    /// As written; compiled into `folder`.
    #[serde(default)]
    path_under: Option<Box<str>>,
    /// The `path-under` folder's components.
    #[serde(skip)]
    pub folder: Option<Vec<Box<str>>>,
}

/// The `[config]` table as read. `R` is [`Rule`] on the fast path, JSON values when a rule
/// has to be read again to say which one is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig<R> {
    #[serde(default = "default_effect")]
    default: Effect,
    #[serde(default)]
    separator: Option<Box<str>>,
    #[serde(default)]
    prefix: PrefixMode,
    #[serde(default = "Vec::new")]
    rules: Vec<R>,
}

fn default_effect() -> Effect {
    Effect::Deny
}

/// A JSON object (the `key` table) read straight into pairs, in order (TOML keys are unique).
fn pairs<'de, D, T>(d: D, key: &'static str) -> Result<Vec<(Box<str>, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<(Box<str>, T)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(k) = map.next_key::<Box<str>>()? {
                let v = map
                    .next_value::<T>()
                    .map_err(|e| de::Error::custom(format_args!("{}.{k}: {e}", self.0)))?;
                out.push((k, v));
            }
            if out.is_empty() {
                return Err(de::Error::custom(format_args!(
                    "{}: empty table; leave it out",
                    self.0
                )));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V(key, PhantomData))
}

/// A pattern or a list of them.
struct OneOrMany(Vec<Glob>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![Glob::new(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(g) = seq.next_element::<Glob>()? {
                    out.push(g);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of patterns (a single string is a list of one).
fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Glob>>, D::Error> {
    OneOrMany::deserialize(d).map(|o| Some(o.0))
}

fn arguments<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Box<str>, Condition)>, D::Error> {
    pairs(d, "arguments")
}

fn attributes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Attribute>, D::Error> {
    Ok(pairs::<D, OneOrMany>(d, "attributes")?
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(d)?;
        let result = match serde_json::from_str::<RawConfig<Rule>>(text.get()) {
            Ok(raw) => Config::compile(raw),
            Err(fast) => Err(explain(text.get(), fast)),
        };
        result.map_err(de::Error::custom)
    }
}

/// `rules[3] ("name")`, for messages.
fn label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("rules[{index}] ({name:?})"),
        None => format!("rules[{index}]"),
    }
}

/// The configuration did not read: find the rule at fault and name it.
fn explain(text: &str, fast: serde_json::Error) -> String {
    let loose: RawConfig<Value> = match serde_json::from_str(text) {
        Ok(loose) => loose,
        Err(e) => return e.to_string(),
    };
    for (index, value) in loose.rules.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Err(e) = Rule::deserialize(value) {
            return format!("{}: {e}", label(index, name.as_deref()));
        }
    }
    fast.to_string()
}

impl Config {
    fn compile(raw: RawConfig<Rule>) -> Result<Config, String> {
        let separator = raw.separator.unwrap_or_else(|| "__".into());
        if separator.is_empty() || separator.chars().any(char::is_whitespace) {
            return Err(format!(
                "separator: {separator:?} must be non-empty and without whitespace (the gateway's [namespacing] separator)"
            ));
        }
        let mut rules = raw.rules;
        let mut names = BTreeSet::new();
        for (index, rule) in rules.iter_mut().enumerate() {
            rule.index = index;
            check_rule(rule).map_err(|e| format!("{}: {e}", label(index, Some(&rule.name))))?;
            if !names.insert(&*rule.name) {
                return Err(format!(
                    "{}: another rule is already named {:?}; names must be unique",
                    label(index, Some(&rule.name)),
                    rule.name
                ));
            }
        }
        // Deny rules first: the first match decides, so a deny always wins over an allow.
        rules.sort_by_key(|r| (r.effect == Effect::Allow, r.index));
        Ok(Config {
            default: raw.default,
            separator,
            prefix: raw.prefix,
            rules,
        })
    }
}

/// Checks one rule beyond its shape and finishes compiling it.
fn check_rule(rule: &mut Rule) -> Result<(), String> {
    if rule.name.trim().is_empty() {
        return Err("`name` must not be empty".into());
    }
    // An empty `roles` means any caller with an identity, as if absent.
    if rule.roles.as_ref().is_some_and(Vec::is_empty) {
        rule.roles = None;
    }
    let lists = [
        ("roles", &rule.roles),
        ("subjects", &rule.subjects),
        ("scopes", &rule.scopes),
        ("tenants", &rule.tenants),
        ("methods", &rule.methods),
        ("upstreams", &rule.upstreams),
        ("tools", &rule.tools),
        ("prompts", &rule.prompts),
        ("resources", &rule.resources),
        ("targets", &rule.targets),
    ];
    for (key, globs) in lists {
        check_globs(key, globs.as_deref())?;
    }
    for (key, globs) in &rule.attributes {
        if globs.is_empty() {
            return Err(format!("attributes.{key}: empty list matches nothing"));
        }
        check_globs(&format!("attributes.{key}"), Some(globs))?;
    }
    for m in rule.methods.iter().flatten() {
        if let Glob::Exact(name) = m {
            if methods::is_lifecycle(name) {
                return Err(format!(
                    "methods: `{name}` is always allowed for a caller with an identity; leave it out"
                ));
            }
            if methods::list_kind(name).is_some() {
                return Err(format!(
                    "methods: `{name}` is a list: its result is filtered by the tools/prompts/resources patterns, so leave it out"
                ));
            }
        }
    }
    for (key, cond) in &mut rule.arguments {
        check_condition(cond).map_err(|e| format!("arguments.{key}: {e}"))?;
    }
    Ok(())
}

/// An empty list or an empty pattern is a mistake.
fn check_globs(key: &str, globs: Option<&[Glob]>) -> Result<(), String> {
    match globs {
        None => Ok(()),
        Some([]) => Err(format!(
            "{key}: empty list matches nothing; leave the key out to match any"
        )),
        Some(globs) if globs.iter().any(Glob::is_empty) => Err(format!("{key}: empty pattern")),
        Some(_) => Ok(()),
    }
}

fn check_condition(cond: &mut Condition) -> Result<(), String> {
    if cond.equals.is_none()
        && cond.one_of.is_none()
        && cond.starts_with.is_none()
        && cond.matches.is_none()
        && cond.path_under.is_none()
    {
        return Err("no operator; use equals, one-of, starts-with, matches or path-under".into());
    }
    let scalar = |what: &str, v: &Value| match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        other => Err(format!(
            "{what}: {other} is not a string, number or boolean"
        )),
    };
    if let Some(v) = &cond.equals {
        scalar("equals", v)?;
    }
    if let Some(values) = &cond.one_of {
        if values.is_empty() {
            return Err("one-of: empty list matches nothing".into());
        }
        for v in values {
            scalar("one-of", v)?;
        }
    }
    if cond.starts_with.as_deref() == Some("") {
        return Err("starts-with: empty prefix matches every string; leave it out".into());
    }
    if cond.matches.as_ref().is_some_and(Glob::is_empty) {
        return Err("matches: empty pattern".into());
    }
    if let Some(folder) = &cond.path_under {
        match paths::components(folder) {
            Some(c) => cond.folder = Some(c.into_iter().map(Into::into).collect()),
            None => {
                return Err(format!(
                    "path-under: {folder:?} must be an absolute path (starting with `/`) that does not climb above `/`"
                ));
            }
        }
    }
    Ok(())
}
