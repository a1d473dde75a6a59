//! The small shared vocabulary: stages, phases, the caller's identity, and what a policy says
//! about itself.

use crate::bindings::portcullis::policy::types as wit;

/// Where in the chain a policy runs. The gateway runs stages in this order, then by priority
/// (lower first), then by name. An operator may move a policy to another stage in its sidecar
/// file, so a policy should not rely on its stage for correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Establishes who is calling (sets the identity) or refuses with 401.
    Authn,
    /// Decides whether the caller may do what it asks; filters lists.
    Authz,
    /// Anything else: validation, tagging, quotas.
    Custom,
    /// Chooses or overrides the upstream and the target name.
    Routing,
    /// Rewrites what comes back (masking secrets and personal data).
    Redaction,
}

/// Which way a message is travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Client to upstream: the request, before it is routed.
    Request,
    /// Upstream to client: the response, before the client sees it.
    Response,
}

impl Phase {
    /// Both phases, for policies that want to see requests and responses.
    pub const BOTH: &'static [Phase] = &[Phase::Request, Phase::Response];
}

/// Who is calling, as established by an `authn` policy.
///
/// ```
/// use portcullis_sdk::Identity;
///
/// let alice = Identity::new("alice").with_role("admin").with_attribute("team", "infra");
/// assert!(alice.has_role("admin"));
/// assert_eq!(alice.attribute("team"), Some("infra"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// A stable id of the caller: a user, a service account, an agent.
    pub subject: String,
    /// Roles the caller holds, for `authz` rules.
    pub roles: Vec<String>,
    /// OAuth scopes (or equivalent) the caller's credential carries.
    pub scopes: Vec<String>,
    /// The tenant (organisation, team) the caller belongs to, if any.
    pub tenant: Option<String>,
    /// Further facts about the caller (e.g. department), as key/value pairs.
    pub attributes: Vec<(String, String)>,
}

impl Identity {
    /// An identity with only a subject.
    pub fn new(subject: impl Into<String>) -> Self {
        Identity {
            subject: subject.into(),
            ..Identity::default()
        }
    }

    /// Adds a role.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds a scope.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets an attribute, replacing an earlier value for the same key.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set_pair(&mut self.attributes, key.into(), value.into());
        self
    }

    /// True if the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// True if the caller's credential carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The value of an attribute, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Replaces the value for `key` in a list of pairs, or appends it.
pub(crate) fn set_pair(pairs: &mut Vec<(String, String)>, key: String, value: String) {
    match pairs.iter_mut().find(|(k, _)| *k == key) {
        Some(pair) => pair.1 = value,
        None => pairs.push((key, value)),
    }
}

/// What a policy says about itself when it is loaded: see [`Policy::describe`](crate::Policy::describe).
///
/// ```
/// use portcullis_sdk::{Info, Phase, Stage};
///
/// let info = Info::new("redact-emails", "1.0.0", Stage::Redaction).with_phases(&[Phase::Response]);
/// assert_eq!(info.phases, [Phase::Response]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// A short name, used in logs, errors and metrics (e.g. `authz`).
    pub name: String,
    /// The policy's own version (e.g. `1.2.0`).
    pub version: String,
    /// The stage it runs in (an operator may override it in the sidecar file).
    pub stage: Stage,
    /// The phases it wants to see; it is not called for the others. Defaults to the request.
    pub phases: Vec<Phase>,
}

impl Info {
    /// A policy that runs in `stage` and sees requests only.
    pub fn new(name: impl Into<String>, version: impl Into<String>, stage: Stage) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            stage,
            phases: vec![Phase::Request],
        }
    }

    /// Sets the phases the policy wants to see, e.g. [`Phase::BOTH`].
    pub fn with_phases(mut self, phases: &[Phase]) -> Self {
        self.phases = phases.to_vec();
        self
    }
}

impl From<Stage> for wit::Stage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Authn => wit::Stage::Authn,
            Stage::Authz => wit::Stage::Authz,
            Stage::Custom => wit::Stage::Custom,
            Stage::Routing => wit::Stage::Routing,
            Stage::Redaction => wit::Stage::Redaction,
        }
    }
}

impl From<Phase> for wit::Phase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Request => wit::Phase::Request,
            Phase::Response => wit::Phase::Response,
        }
    }
}

impl From<wit::Phase> for Phase {
    fn from(phase: wit::Phase) -> Self {
        match phase {
            wit::Phase::Request => Phase::Request,
            wit::Phase::Response => Phase::Response,
        }
    }
}

impl From<wit::Identity> for Identity {
    fn from(id: wit::Identity) -> Self {
        Identity {
            subject: id.subject,
            roles: id.roles,
            scopes: id.scopes,
            tenant: id.tenant,
            attributes: id.attributes,
        }
    }
}

impl From<Identity> for wit::Identity {
    fn from(id: Identity) -> Self {
        wit::Identity {
            subject: id.subject,
            roles: id.roles,
            scopes: id.scopes,
            tenant: id.tenant,
            attributes: id.attributes,
        }
    }
}

impl From<Info> for wit::PluginInfo {
    fn from(info: Info) -> Self {
        wit::PluginInfo {
            name: info.name,
            version: info.version,
            stage: info.stage.into(),
            phases: info.phases.into_iter().map(Into::into).collect(),
        }
    }
}
