//! Write Portcullis policies in Rust.
//!
//! A policy is a WebAssembly component that the gateway asks about every MCP message passing
//! its stage. This crate wraps the contract (`wit/policy.wit`, world `plugin`) so a policy is a
//! type implementing [`Policy`] plus one [`export_policy!`] line:
//!
//! ```rust,standalone_crate
//! use portcullis_sdk::prelude::*;
//!
//! /// The sidecar file's `[config]` table, e.g. `blocked = ["delete_repo"]`.
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields, rename_all = "kebab-case")]
//! struct Config {
//!     blocked: Vec<String>,
//! }
//!
//! /// Refuses calls to the configured tools.
//! struct Block;
//!
//! impl Policy for Block {
//!     type Config = Config;
//!
//!     fn describe() -> Info {
//!         Info::new("block", "0.1.0", Stage::Authz).with_phases(&[Phase::Request])
//!     }
//!
//!     fn evaluate(config: &Config, msg: &Message) -> Verdict {
//!         match msg.target() {
//!             Some(tool) if msg.method() == "tools/call" && config.blocked.iter().any(|b| b == tool) => {
//!                 log::info(&format!("blocked {tool}"));
//!                 Verdict::deny(codes::DENIED, format!("tool {tool} is disabled"))
//!             }
//!             _ => Changes::new().with_attribute("block.checked", "true").into(),
//!         }
//!     }
//! }
//!
//! export_policy!(Block);
//!
//! // The same code runs natively, so policies are unit-tested with plain `cargo test`:
//! # fn main() {
//! let config = portcullis_sdk::parse_config::<Block>(r#"{ "blocked": ["delete_repo"] }"#).unwrap();
//! let call = TestMessage::request("tools/call").with_target("delete_repo").build();
//! assert!(Block::evaluate(&config, &call).is_deny());
//! # }
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2` on a `cdylib` crate: the output `.wasm`
//! is a component, ready to drop into the gateway's plugins folder.
//!
//! # How an evaluation runs
//!
//! The gateway creates a fresh instance for every evaluation (or, in the sidecar's `warm`
//! mode, reuses one for a bounded number of calls). In each instance it first calls `init`
//! with the sidecar's `[config]` table as JSON: the SDK deserializes it into
//! [`Policy::Config`], runs [`Policy::init`], and keeps the result for every `evaluate`
//! in that instance. At load, `init` runs once on its own to validate the config: an error
//! keeps the policy out of the chain, with the message in the gateway's log.
//!
//! Nothing a policy keeps in memory survives its instance; use [`kv`] for state that must.
//! A panic aborts the instance (a trap), which the gateway treats as a failure of the
//! policy: fail closed unless the operator set `fail-open`.
//!
//! # Natively
//!
//! Everything here also compiles for the host target. There, [`log`] prints to stderr,
//! [`kv`] is an in-memory map per thread, and messages come from [`TestMessage`].
#![deny(missing_docs)]

mod message;
mod types;
mod verdict;

#[cfg(feature = "http")]
pub mod http;
pub mod kv;
pub mod log;

use serde::de::DeserializeOwned;

pub use message::{Message, TestMessage};
pub use serde_json;
pub use types::{Identity, Info, Phase, Stage};
pub use verdict::{Changes, Denial, Verdict, codes};

/// The usual imports for writing a policy.
pub mod prelude {
    pub use crate::{
        Changes, Denial, Identity, Info, Message, NoConfig, Phase, Policy, Stage, TestMessage,
        Verdict, codes, export_policy, kv, log,
    };
    pub use serde_json::{Value, json};
}

/// A policy: what it is ([`describe`](Policy::describe)), what configuration it takes
/// ([`Config`](Policy::Config), checked by [`init`](Policy::init)), and what it decides
/// ([`evaluate`](Policy::evaluate)). The three hooks carry the names of the WIT exports
/// they implement (`describe`, `init`, `evaluate`).
///
/// Export an implementation with [`export_policy!`].
pub trait Policy {
    /// The sidecar file's `[config]` table, deserialized from JSON (`{}` when the sidecar has
    /// none). Use `#[serde(deny_unknown_fields, rename_all = "kebab-case")]` so a typo in the
    /// sidecar is an error at load, and [`NoConfig`] for a policy without settings. To
    /// precompute something from the settings (a compiled pattern, a lookup set), deserialize
    /// through `#[serde(try_from = "...")]`: `init` runs in every instance, so keep it quick.
    type Config: DeserializeOwned + 'static;

    /// Name, version, stage and phases. Called once, when the gateway loads the policy, and
    /// without a configuration.
    fn describe() -> Info;

    /// Checks a configuration beyond what deserializing it checks (the WIT `init` hook, after
    /// the SDK deserialized the sidecar's `[config]` into [`Policy::Config`]). An `Err` keeps the policy
    /// out of the chain at load; its text goes to the gateway's log, so say which setting is
    /// wrong and why.
    fn init(config: &Self::Config) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Decides about one message.
    fn evaluate(config: &Self::Config, msg: &Message) -> Verdict;
}

/// The configuration of a policy that takes none: accepts `{}` and rejects any key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Deserializes and validates a configuration exactly as `init` does in the gateway: for
/// native tests of a policy's settings.
///
/// ```
/// use portcullis_sdk::prelude::*;
///
/// struct Quiet;
/// impl Policy for Quiet {
///     type Config = NoConfig;
///     fn describe() -> Info { Info::new("quiet", "0.1.0", Stage::Custom) }
///     fn evaluate(_: &NoConfig, _: &Message) -> Verdict { Verdict::allow() }
/// }
///
/// assert!(portcullis_sdk::parse_config::<Quiet>("{}").is_ok());
/// let err = portcullis_sdk::parse_config::<Quiet>(r#"{ "loud": true }"#).unwrap_err();
/// assert!(err.starts_with("invalid config: unknown field `loud`"));
/// ```
pub fn parse_config<P: Policy>(json: &str) -> Result<P::Config, String> {
    let config: P::Config =
        serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
    P::init(&config)?;
    Ok(config)
}

/// Exports a [`Policy`] implementation as the component's `policy` interface.
///
/// Use it once per crate, at the top level, on the crate that is built as a `cdylib`.
/// Natively (for unit tests and `cargo check` on the host) it exports nothing: the names
/// of a component's exports are not valid native symbols.
///
/// ```rust,standalone_crate
/// use portcullis_sdk::prelude::*;
///
/// struct AllowAll;
///
/// impl Policy for AllowAll {
///     type Config = NoConfig;
///     fn describe() -> Info {
///         Info::new("allow-all", "0.1.0", Stage::Custom).with_phases(Phase::BOTH)
///     }
///     fn evaluate(_: &NoConfig, _: &Message) -> Verdict {
///         Verdict::allow()
///     }
/// }
///
/// export_policy!(AllowAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __PORTCULLIS_CONFIG: $crate::__private::ConfigSlot<<$policy as $crate::Policy>::Config> =
                    const { $crate::__private::ConfigSlot::new() };
            }

            // Natively nothing is exported (see below), so the type is only type-checked.
            #[allow(dead_code)]
            struct __PortcullisExport;

            impl $crate::bindings::exports::portcullis::policy::policy::Guest for __PortcullisExport {
                fn describe() -> $crate::bindings::exports::portcullis::policy::policy::PluginInfo {
                    $crate::__private::describe::<$policy>()
                }

                fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$policy>(&config, &__PORTCULLIS_CONFIG)
                }

                fn evaluate(
                    msg: &$crate::bindings::exports::portcullis::policy::policy::Message,
                ) -> $crate::bindings::exports::portcullis::policy::policy::Verdict {
                    $crate::__private::evaluate::<$policy>(msg, &__PORTCULLIS_CONFIG)
                }
            }

            // The component's exports have names like `portcullis:policy/policy@0.1.0#init`,
            // which native linkers reject in a `cdylib`: export them only in a component.
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::__export_plugin_world!(__PortcullisExport with_types_in $crate::bindings);
        };
    };
}

/// The bindings `wit-bindgen` generates for `wit/policy.wit`; used by [`export_policy!`].
#[doc(hidden)]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::portcullis_sdk::bindings",
    });
}

/// What [`export_policy!`] expands to calls; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::thread::LocalKey;

    use crate::bindings::portcullis::policy::types as wit;
    use crate::{Message, Policy, Verdict, codes};

    /// The configuration `init` parsed, kept for every `evaluate` in the same instance.
    /// A component instance is single-threaded, so a thread-local is the instance's global.
    pub struct ConfigSlot<C>(RefCell<Option<Rc<C>>>);

    impl<C> ConfigSlot<C> {
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            ConfigSlot(RefCell::new(None))
        }
    }

    type Slot<C> = LocalKey<ConfigSlot<C>>;

    pub fn describe<P: Policy>() -> wit::PluginInfo {
        P::describe().into()
    }

    pub fn init<P: Policy>(json: &str, slot: &'static Slot<P::Config>) -> Result<(), String> {
        let config = crate::parse_config::<P>(json)?;
        slot.with(|s| *s.0.borrow_mut() = Some(Rc::new(config)));
        Ok(())
    }

    pub fn evaluate<P: Policy>(msg: &wit::Message, slot: &'static Slot<P::Config>) -> wit::Verdict {
        let current = || slot.with(|s| s.0.borrow().clone());
        // The gateway always calls `init` first; a host that does not gets the configuration
        // of an empty sidecar, or a refusal if that is not valid.
        let config = current().or_else(|| init::<P>("{}", slot).ok().and_then(|()| current()));
        let Some(config) = config else {
            return Verdict::deny(codes::INTERNAL_ERROR, "policy not initialised").into();
        };
        P::evaluate(&config, &Message::from_host(msg)).into()
    }
}
