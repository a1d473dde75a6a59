//! The router through a [`Links`] whose upstreams never connect (`router.rs`).

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{Dispatch, Forward, Links, ListKind, Names, Route, Router};
use crate::config::{Namespacing, PrefixMode};
use crate::mcp::{Message, codes, methods};
use crate::upstream::{Link, Upstream, UpstreamError};

/// A session whose upstreams never connect: lists leave them out, so what is routed is
/// what the names alone say.
struct Offline {
    upstreams: Vec<Arc<Upstream>>,
    told: Mutex<Vec<(usize, ListKind)>>,
}

impl Links for Offline {
    fn upstream(&self, idx: usize) -> &Arc<Upstream> {
        &self.upstreams[idx]
    }

    async fn connect(&self, idx: usize) -> Result<Arc<Link>, UpstreamError> {
        Err(UpstreamError::Unavailable {
            upstream: self.upstreams[idx].name.clone(),
            reason: "offline".into(),
        })
    }

    fn list_changed(&self, idx: usize, kind: ListKind) {
        self.told.lock().unwrap().push((idx, kind));
    }

    fn owned(&self) -> Option<Arc<Self>> {
        None
    }
}

fn setup(mode: PrefixMode, names: &[&str]) -> (Arc<Router>, Offline) {
    let upstreams: Vec<_> = names
        .iter()
        .map(|n| Upstream::new(n, toml::from_str("command = \"x\"").unwrap()).unwrap())
        .collect();
    let ns = Namespacing {
        separator: "__".into(),
        prefix: mode,
    };
    let names = Names::new(&ns, upstreams.iter().map(|u| u.name.clone()).collect());
    let router = Arc::new(Router::new(Arc::new(names), 0));
    let links = Offline {
        upstreams,
        told: Mutex::default(),
    };
    (router, links)
}

fn call(name: &str) -> Message {
    Message::request(
        json!(7),
        methods::TOOLS_CALL,
        Some(json!({ "name": name, "arguments": {} })),
    )
}

fn forwarded(d: Dispatch) -> Forward {
    match d {
        Dispatch::Forward(f) => f,
        Dispatch::Answer(a) => panic!("answered here: {a:?}"),
    }
}

fn answered(d: Dispatch) -> Message {
    match d {
        Dispatch::Answer(a) => a,
        Dispatch::Forward(f) => panic!("forwarded to {}", f.upstream),
    }
}

#[tokio::test]
async fn a_prefixed_name_goes_to_its_upstream_under_its_own_name() {
    let (router, links) = setup(PrefixMode::Always, &["a", "b"]);
    let f = forwarded(router.dispatch(&links, call("b__echo"), None, None).await);
    assert_eq!(f.upstream, 1);
    assert_eq!(f.msg.param_str("name"), Some("echo"));
    assert_eq!(f.msg.id(), Some(&json!(7)), "the client's id is kept");
}

#[tokio::test]
async fn a_resolution_is_reused_and_policies_see_the_upstream_by_name() {
    let (router, links) = setup(PrefixMode::Always, &["a", "b"]);
    let msg = call("a__echo");
    let resolved = router.resolve(&links, &msg).await;
    assert_eq!(
        router.named(&links, resolved.as_ref()),
        Some(("a".to_string(), "echo".to_string()))
    );
    let f = forwarded(router.dispatch(&links, msg, None, resolved.as_ref()).await);
    assert_eq!((f.upstream, f.msg.param_str("name")), (0, Some("echo")));
}

#[tokio::test]
async fn unknown_names_and_methods_are_answered_here() {
    let (router, links) = setup(PrefixMode::WhenNeeded, &["a", "b"]);
    let unknown = answered(router.dispatch(&links, call("nope"), None, None).await);
    assert_eq!(
        unknown.error_value().unwrap()["code"],
        codes::INVALID_PARAMS
    );
    assert_eq!(
        unknown.error_value().unwrap()["message"],
        "Unknown tool: nope"
    );
    let custom = Message::request(json!(1), "vendor/thing", None);
    let refused = answered(router.dispatch(&links, custom, None, None).await);
    assert_eq!(
        refused.error_value().unwrap()["code"],
        codes::METHOD_NOT_FOUND
    );
}

#[tokio::test]
async fn with_one_upstream_unknown_methods_and_uris_go_to_it() {
    let (router, links) = setup(PrefixMode::WhenNeeded, &["only"]);
    let custom = Message::request(json!(1), "vendor/thing", None);
    assert_eq!(
        forwarded(router.dispatch(&links, custom, None, None).await).upstream,
        0
    );
    let read = Message::request(
        json!(2),
        methods::RESOURCES_READ,
        Some(json!({ "uri": "file:///x" })),
    );
    let f = forwarded(router.dispatch(&links, read, None, None).await);
    assert_eq!(f.msg.param_str("uri"), Some("file:///x"));
}

#[tokio::test]
async fn a_routing_policy_overrides_upstream_and_target() {
    let (router, links) = setup(PrefixMode::Always, &["a", "b"]);
    let route = Route {
        upstream: Some("b".into()),
        target: Some("echo_v2".into()),
    };
    let f = forwarded(
        router
            .dispatch(&links, call("a__echo"), Some(&route), None)
            .await,
    );
    assert_eq!((f.upstream, f.msg.param_str("name")), (1, Some("echo_v2")));
    let nowhere = Route {
        upstream: Some("zz".into()),
        target: None,
    };
    let refused = answered(
        router
            .dispatch(&links, call("a__echo"), Some(&nowhere), None)
            .await,
    );
    assert_eq!(
        refused.error_value().unwrap()["code"],
        codes::INTERNAL_ERROR
    );
}

#[tokio::test]
async fn a_read_answer_shows_the_uri_the_client_asked_for() {
    let (router, links) = setup(PrefixMode::Always, &["a", "b"]);
    let read = Message::request(
        json!(3),
        methods::RESOURCES_READ,
        Some(json!({ "uri": "b+file:///x" })),
    );
    let f = forwarded(router.dispatch(&links, read, None, None).await);
    assert_eq!((f.upstream, f.msg.param_str("uri")), (1, Some("file:///x")));
    let mut answer = Message::result(
        json!(3),
        json!({ "contents": [{ "uri": "file:///x", "text": "hi" }, { "uri": "file:///y" }] }),
    );
    router.restore(f.back, f.upstream, &mut answer);
    let contents = &answer.result_value().unwrap()["contents"];
    assert_eq!(contents[0]["uri"], "b+file:///x");
    assert_eq!(contents[1]["uri"], "b+file:///y");
}

#[tokio::test]
async fn a_list_leaves_out_upstreams_that_cannot_answer() {
    let (router, links) = setup(PrefixMode::WhenNeeded, &["a", "b"]);
    let list = Message::request(json!(4), methods::TOOLS_LIST, None);
    let answer = answered(router.dispatch(&links, list, None, None).await);
    assert_eq!(answer.result_value().unwrap()["tools"], json!([]));
    assert!(links.told.lock().unwrap().is_empty());
}
