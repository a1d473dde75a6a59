use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};

use super::hub::Hub;
use super::link::SharedLink;
use super::state::{level_name, level_rank};
use crate::mcp::{IdKey, Message, methods};
use crate::upstream::{Hello, InboundHandler, Related, Upstream};

/// A session as the hub sees it: records what reaches it.
#[derive(Default)]
struct Recorder(Mutex<Vec<Message>>);

impl InboundHandler for Recorder {
    fn on_message(&self, _: &Arc<Upstream>, msg: Message, _: Option<&Related>) {
        self.0.lock().unwrap().push(msg);
    }
}

impl Recorder {
    fn methods(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.method().to_string())
            .collect()
    }
}

fn hub() -> (Arc<Upstream>, Arc<Hub>) {
    let config = toml::from_str("command = \"x\"\nshare = \"shared\"").unwrap();
    let upstream = Upstream::new("u", config).unwrap();
    let hub = Arc::new(Hub::new(&upstream));
    (upstream, hub)
}

fn member(hub: &Arc<Hub>, capabilities: Value) -> (Arc<Recorder>, SharedLink) {
    let recorder = Arc::new(Recorder::default());
    let weak = Arc::downgrade(&recorder) as Weak<dyn InboundHandler>;
    let hello = Hello {
        capabilities,
        client_info: json!({}),
    };
    let (link, _) = hub.attach(&hello, weak);
    (recorder, link)
}

fn in_flight(hub: &Hub, id: u64, session: &SharedLink) {
    hub.routes().in_flight.insert(id, (session.key, None));
}

#[test]
fn list_changes_reach_everyone_and_updates_only_subscribers() {
    let (upstream, hub) = hub();
    let (a, la) = member(&hub, json!({}));
    let (b, _lb) = member(&hub, json!({}));
    hub.routes()
        .subscriptions
        .entry("file:///x".into())
        .or_default()
        .insert(la.key);
    hub.on_message(
        &upstream,
        Message::notification(methods::TOOLS_LIST_CHANGED, None),
        None,
    );
    hub.on_message(
        &upstream,
        Message::notification(
            methods::RESOURCES_UPDATED,
            Some(json!({ "uri": "file:///x" })),
        ),
        None,
    );
    assert_eq!(
        a.methods(),
        [methods::TOOLS_LIST_CHANGED, methods::RESOURCES_UPDATED]
    );
    assert_eq!(b.methods(), [methods::TOOLS_LIST_CHANGED]);
}

#[test]
fn progress_goes_to_its_caller_with_the_callers_token() {
    let (upstream, hub) = hub();
    let (a, la) = member(&hub, json!({}));
    let (b, lb) = member(&hub, json!({}));
    in_flight(&hub, 1, &la);
    in_flight(&hub, 2, &lb);
    hub.routes()
        .progress
        .insert("pc-2".into(), (lb.key, json!(1)));
    let progress = json!({ "progressToken": "pc-2", "progress": 5 });
    hub.on_message(
        &upstream,
        Message::notification(methods::PROGRESS, Some(progress)),
        None,
    );
    assert!(a.methods().is_empty());
    let got = b.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].params().unwrap()["progressToken"], json!(1));
}

#[test]
fn a_question_goes_to_the_one_session_in_flight_and_is_refused_when_several_are() {
    let (upstream, hub) = hub();
    let (a, la) = member(&hub, json!({ "sampling": {} }));
    let (b, lb) = member(&hub, json!({}));
    let sample = |id: u64| {
        Message::request(
            json!(id),
            "sampling/createMessage",
            Some(json!({ "messages": [] })),
        )
    };
    in_flight(&hub, 1, &la);
    hub.on_message(&upstream, sample(100), None);
    assert_eq!(a.methods(), ["sampling/createMessage"]);
    // Only a may answer it.
    assert_eq!(
        hub.routes()
            .asked
            .get(&IdKey::of(&json!(100)))
            .map(|(s, _)| *s),
        Some(la.key)
    );
    in_flight(&hub, 2, &lb);
    hub.on_message(&upstream, sample(101), None);
    assert_eq!(a.methods().len(), 1, "ambiguous: nobody is asked");
    assert!(b.methods().is_empty());
    // b alone, but its client cannot sample: refused.
    hub.routes().in_flight.remove(&1);
    hub.on_message(&upstream, sample(102), None);
    assert!(b.methods().is_empty());
}

#[test]
fn log_lines_are_filtered_by_each_sessions_level() {
    let (upstream, hub) = hub();
    let (a, la) = member(&hub, json!({}));
    let (b, lb) = member(&hub, json!({}));
    let (c, _lc) = member(&hub, json!({}));
    hub.routes().sessions.get_mut(&la.key).unwrap().level = level_rank("error");
    hub.routes().sessions.get_mut(&lb.key).unwrap().level = level_rank("debug");
    let line = json!({ "level": "info", "data": "hello" });
    hub.on_message(
        &upstream,
        Message::notification(methods::MESSAGE, Some(line)),
        None,
    );
    assert!(a.methods().is_empty());
    assert_eq!(b.methods(), [methods::MESSAGE]);
    assert_eq!(c.methods(), [methods::MESSAGE], "no level set: as sent");
}

#[test]
fn a_session_that_leaves_takes_its_routes_with_it() {
    let (_upstream, hub) = hub();
    let (_a, la) = member(&hub, json!({}));
    let (_b, lb) = member(&hub, json!({}));
    let key = la.key;
    in_flight(&hub, 1, &la);
    hub.routes()
        .subscriptions
        .entry("u:1".into())
        .or_default()
        .insert(key);
    hub.routes()
        .subscriptions
        .entry("u:2".into())
        .or_default()
        .extend([key, lb.key]);
    drop(la);
    let routes = hub.routes();
    assert_eq!(routes.sessions.len(), 1);
    assert!(routes.in_flight.is_empty());
    assert!(!routes.subscriptions.contains_key("u:1"));
    assert_eq!(routes.subscriptions["u:2"].len(), 1);
}

#[test]
fn levels_rank_from_debug_to_emergency() {
    assert_eq!(level_rank("debug"), Some(0));
    assert_eq!(level_rank("warning"), Some(3));
    assert_eq!(level_rank("emergency"), Some(7));
    assert_eq!(level_rank("loud"), None);
    assert_eq!(level_name(1), Some("info"));
}
