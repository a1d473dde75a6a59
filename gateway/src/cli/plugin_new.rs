//! `portcullis plugin new`: scaffolds a standalone policy project in Rust, Python, JavaScript
//! or Go, from the templates under `sdk/templates/` (embedded in the binary).
//!
//! Every project gets the same rule (refuse a tool whose name contains `delete` unless the
//! caller is an admin; hide such tools from a non-admin's `tools/list`), the same sidecar and
//! sample messages for both phases, and a README with its build and test commands; only the
//! source and the build differ by language.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

/// A template file: where it goes in the project, and its text.
type File = (&'static str, &'static str);

macro_rules! template {
    ($($dest:literal => $src:literal),* $(,)?) => {
        &[$(($dest, include_str!(concat!("../../../sdk/templates/", $src)))),*]
    };
}

const COMMON: &[File] = template![
    "README.md" => "common/README.md",
    "{{name}}.toml" => "common/sidecar.toml",
    "samples/delete-call.json" => "common/samples/delete-call.json",
    "samples/read-call.json" => "common/samples/read-call.json",
    "samples/tools-list.json" => "common/samples/tools-list.json",
    "samples/tools-list-result.json" => "common/samples/tools-list-result.json",
];

const RUST: &[File] = template![
    "Cargo.toml" => "rust/Cargo.toml",
    "build.rs" => "rust/build.rs",
    "src/lib.rs" => "rust/src/lib.rs",
    ".gitignore" => "rust/gitignore",
];

const PYTHON: &[File] = template![
    "policy.py" => "python/policy.py",
    "requirements.txt" => "python/requirements.txt",
    "build.sh" => "python/build.sh",
    ".gitignore" => "python/gitignore",
    "portcullis.py" => "../../examples/policies/python/portcullis.py",
    "wit/policy.wit" => "../wit/policy.wit",
];

const JS: &[File] = template![
    "policy.js" => "js/policy.js",
    "package.json" => "js/package.json",
    ".gitignore" => "js/gitignore",
    "portcullis.js" => "../../examples/policies/js/portcullis.js",
    "wit/policy.wit" => "../wit/policy.wit",
];

#[derive(Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    Go,
}

#[derive(Args)]
pub struct NewArgs {
    /// The language of the project.
    #[arg(long)]
    pub lang: Lang,
    /// The policy's name (lowercase letters, digits and `-`): its declared name, its `.wasm`
    /// and sidecar file names.
    pub name: String,
    /// Where to create the project (default: ./NAME). Must not exist or be empty.
    pub dir: Option<PathBuf>,
    /// The Rust SDK to depend on, as a path (default: the SDK of the checkout this binary was
    /// built from, if it is still there; else the crates.io release).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
}

/// Writes the project and prints what to do next.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    let (language, files, build, notes, vars) = match args.lang {
        Lang::Go => anyhow::bail!(
            "--lang go is not scaffolded yet: copy examples/policies/go/template from a checkout \
             and build it with `examples/policies/build go DIR -o OUT` (docs/policies-go.md)"
        ),
        Lang::Python => (
            "Python",
            PYTHON,
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # once\n\
             . .venv/bin/activate && ./build.sh      # prints the path it wrote; -o OUT to choose"
                .to_string(),
            "Needs Python 3 and, once, the pinned `componentize-py` (requirements.txt). \
             `portcullis.py` is the helper and `wit/` the contract, both copied here by \
             `portcullis plugin new` from the version of Portcullis that made the project.\n"
                .to_string(),
            Vec::new(),
        ),
        Lang::Js => (
            "JavaScript",
            JS,
            "npm install       # once: the pinned componentize-js\nnpm run build     # prints the path it wrote"
                .to_string(),
            "Needs Node.js and npm. `portcullis.js` is the helper and `wit/` the contract, both \
             copied here by `portcullis plugin new` from the version of Portcullis that made the \
             project.\n"
                .to_string(),
            Vec::new(),
        ),
        Lang::Rust => {
            let sdk = match &args.sdk_path {
                Some(p) => Some(
                    std::path::absolute(p)
                        .with_context(|| format!("--sdk-path {}", p.display()))?,
                ),
                None => checkout_sdk(),
            };
            let dependency = match &sdk {
                Some(p) => format!(
                    "portcullis-sdk = {{ path = {} }}",
                    toml_string(&p.display().to_string())
                ),
                None => format!("portcullis-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
            };
            let crate_name = args.name.replace('-', "_");
            (
                "Rust",
                RUST,
                format!(
                    "cargo build --release --target wasm32-wasip2\ncp target/wasm32-wasip2/release/{crate_name}.wasm {}.wasm",
                    args.name
                ),
                "Needs Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`). \
                 `cargo test` runs the rule's unit tests natively.\n"
                    .to_string(),
                vec![("{{sdk_dependency}}", dependency), ("{{crate}}", crate_name)],
            )
        }
    };
    let mut vars = vars;
    vars.extend([
        ("{{name}}", args.name.clone()),
        ("{{language}}", language.to_string()),
        ("{{build}}", build),
        ("{{build_notes}}", notes),
    ]);
    let fill = |text: &str| {
        vars.iter()
            .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
    };
    for (dest, text) in COMMON.iter().chain(files) {
        let path = dir.join(fill(dest));
        // The helper and the contract are copied as they are.
        let verbatim = dest.starts_with("wit/") || dest.starts_with("portcullis.");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = if verbatim {
            text.to_string()
        } else {
            fill(text)
        };
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if dest.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    println!("created {} ({language})", dir.display());
    println!(
        "next: cd {} and follow README.md (build, then `portcullis plugin test`)",
        dir.display()
    );
    Ok(())
}

/// A name that is a valid package name in every language and a safe file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    anyhow::ensure!(
        ok,
        "invalid name {name:?}: use 1 to 64 lowercase letters, digits and `-`, starting with a letter"
    );
    Ok(())
}

/// The SDK of the checkout this binary was built from, while it exists.
fn checkout_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
