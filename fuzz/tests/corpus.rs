//! The seed corpus is also a regression suite: every seed runs through its target without a
//! crash, and a front seed named `name.<status>[-<status>…].http` gets exactly those statuses.

use portcullis_fuzz::engine::replay;
use portcullis_fuzz::{front, message, seeds};

#[test]
fn front_seeds_answer_as_their_names_say() {
    let seeds = seeds("front", &[]).unwrap();
    assert!(seeds.len() >= 40, "only {} front seeds", seeds.len());
    let target = front::Front::new().unwrap();
    if let Err(failures) = replay(&target, &seeds) {
        panic!("{failures}");
    }
}

#[test]
fn message_seeds_hold_the_message_model_properties() {
    let seeds = seeds("message", &[]).unwrap();
    assert!(seeds.len() >= 40, "only {} message seeds", seeds.len());
    if let Err(failures) = replay(&message::MessageModel, &seeds) {
        panic!("{failures}");
    }
}
