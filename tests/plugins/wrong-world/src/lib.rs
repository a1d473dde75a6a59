//! `wrong-world`: a valid component built against a world that is not the policy contract,
//! so the gateway's tests can check that loading it fails with a clear error.

wit_bindgen::generate!({
    path: "wit",
    world: "greeter",
});

// Only a component exports it: the export's name is not a valid native symbol.
#[allow(dead_code)]
struct Greeter;

impl Guest for Greeter {
    fn hello() -> String {
        "hello from the wrong world".into()
    }
}

#[cfg(target_arch = "wasm32")]
export!(Greeter);
