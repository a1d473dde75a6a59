//! Conditions on the caller: each is a list of patterns that must match the identity's
//! value; an absent list (`None`) holds for everyone. A value the identity lacks (no tenant,
//! no such attribute) matches no pattern.

use portcullis_sdk::Identity;

use crate::glob::{Glob, any_match};

/// The subject matches one of `patterns`.
pub fn subject(patterns: Option<&[Glob]>, id: &Identity) -> bool {
    patterns.is_none_or(|p| any_match(p, &id.subject))
}

/// One of the caller's roles matches one of `patterns`.
pub fn roles(patterns: Option<&[Glob]>, id: &Identity) -> bool {
    patterns.is_none_or(|p| id.roles.iter().any(|r| any_match(p, r)))
}

/// One of the caller's scopes matches one of `patterns`.
pub fn scopes(patterns: Option<&[Glob]>, id: &Identity) -> bool {
    patterns.is_none_or(|p| id.scopes.iter().any(|s| any_match(p, s)))
}

/// The caller has a tenant and it matches one of `patterns`.
pub fn tenant(patterns: Option<&[Glob]>, id: &Identity) -> bool {
    patterns.is_none_or(|p| id.tenant.as_deref().is_some_and(|t| any_match(p, t)))
}

/// A condition on one attribute: its name and the patterns its value must match.
pub type Attribute = (Box<str>, Vec<Glob>);

/// Every condition holds: the caller has the attribute and its value matches one of the
/// patterns.
pub fn attributes(conditions: &[Attribute], id: &Identity) -> bool {
    conditions
        .iter()
        .all(|(k, p)| id.attribute(k).is_some_and(|v| any_match(p, v)))
}
