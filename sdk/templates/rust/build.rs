//! Refuses a build that would write no component: without `crate-type = ["cdylib"]` in
//! `[lib]`, `cargo build --target wasm32-wasip2` succeeds and writes no `.wasm`.

fn main() {
    println!("cargo::rerun-if-changed=Cargo.toml");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.starts_with("wasm32") {
        return; // native builds (cargo test) need no component
    }
    let manifest = std::fs::read_to_string("Cargo.toml").expect("Cargo.toml is readable");
    let cdylib = manifest
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .any(|l| l.trim_start().starts_with("crate-type") && l.contains("\"cdylib\""));
    if !cdylib {
        panic!(
            "Cargo.toml has no `crate-type = [\"cdylib\", ...]` under [lib]: the build would \
             write no .wasm. Add it back."
        );
    }
}
