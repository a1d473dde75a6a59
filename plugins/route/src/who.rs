//! Conditions on the caller, shared by routes and catalog entries.

use portcullis_sdk::Identity;

use crate::config::Who;
use crate::glob::any_match;

/// True when every condition present holds for `id`. A condition on the caller never holds
/// without an identity; an entry without conditions concerns everyone, identified or not.
pub fn concerns(who: &Who, id: Option<&Identity>) -> bool {
    let unrestricted = who.subjects.is_none()
        && who.roles.is_none()
        && who.tenants.is_none()
        && who.attributes.is_empty();
    if unrestricted {
        return true;
    }
    let Some(id) = id else {
        return false;
    };
    who.subjects
        .as_ref()
        .is_none_or(|s| any_match(s, &id.subject))
        && who
            .roles
            .as_ref()
            .is_none_or(|r| id.roles.iter().any(|role| any_match(r, role)))
        && who.tenants.as_ref().is_none_or(|t| {
            id.tenant
                .as_deref()
                .is_some_and(|tenant| any_match(t, tenant))
        })
        && who
            .attributes
            .iter()
            .all(|(k, v)| id.attribute(k).is_some_and(|value| any_match(v, value)))
}
