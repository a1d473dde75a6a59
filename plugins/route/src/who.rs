//! Conditions on the caller, shared by routes and catalog entries.

use portcullis_sdk::Identity;

use crate::config::Who;
use policy_matchers::caller;

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
    caller::subject(who.subjects.as_deref(), id)
        && caller::roles(who.roles.as_deref(), id)
        && caller::tenant(who.tenants.as_deref(), id)
        && caller::attributes(&who.attributes, id)
}
