//! The four lists MCP servers offer, by their `*/list` and `notifications/*/list_changed`
//! methods.

use super::methods;

/// The four list kinds the gateway merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    pub const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Prompts,
        ListKind::Resources,
        ListKind::Templates,
    ];

    pub fn from_method(method: &str) -> Option<Self> {
        Some(match method {
            methods::TOOLS_LIST => ListKind::Tools,
            methods::PROMPTS_LIST => ListKind::Prompts,
            methods::RESOURCES_LIST => ListKind::Resources,
            methods::RESOURCES_TEMPLATES_LIST => ListKind::Templates,
            _ => return None,
        })
    }

    /// The kinds a `notifications/*/list_changed` invalidates.
    pub fn from_list_changed(method: &str) -> &'static [ListKind] {
        match method {
            methods::TOOLS_LIST_CHANGED => &[ListKind::Tools],
            methods::PROMPTS_LIST_CHANGED => &[ListKind::Prompts],
            methods::RESOURCES_LIST_CHANGED => &[ListKind::Resources, ListKind::Templates],
            _ => &[],
        }
    }

    /// The notification that tells a client its list of this kind changed.
    pub fn list_changed(self) -> &'static str {
        match self {
            ListKind::Tools => methods::TOOLS_LIST_CHANGED,
            ListKind::Prompts => methods::PROMPTS_LIST_CHANGED,
            ListKind::Resources | ListKind::Templates => methods::RESOURCES_LIST_CHANGED,
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => methods::TOOLS_LIST,
            ListKind::Prompts => methods::PROMPTS_LIST,
            ListKind::Resources => methods::RESOURCES_LIST,
            ListKind::Templates => methods::RESOURCES_TEMPLATES_LIST,
        }
    }

    /// The result field holding the items.
    pub fn items_key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }

    /// The item field that is namespaced.
    pub(crate) fn name_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }

    /// The server capability that says an upstream has this kind at all.
    pub fn capability(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources | ListKind::Templates => "resources",
        }
    }

    pub(crate) fn is_uri(self) -> bool {
        matches!(self, ListKind::Resources | ListKind::Templates)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
