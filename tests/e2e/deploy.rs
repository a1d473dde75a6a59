//! The Kubernetes manifests (`deploy/kubernetes`): rendered with kustomize (the one built
//! into `kubectl`), checked for what a rollout relies on (probes, drain time, a read-only
//! root, writable volumes, no session affinity), and the configuration they mount validated
//! by the real `portcullis check`, in a directory laid out like the Pod's mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use portcullis_tests::harness::{TempDir, bin_path, plugin_wasm};
use serde::Deserialize as _;
use serde_json::Value;

/// The repository's `deploy/kubernetes`.
fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read the manifests") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a manifest");
        }
    }
}

/// `kubectl kustomize <dir>`, one JSON value per YAML document.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl (its built-in kustomize renders the manifests): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 manifests");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .collect()
}

/// The document of this kind and name; a name ending in `-` matches a generated name
/// (kustomize's hash suffix).
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n == name || (name.ends_with('-') && n.starts_with(name)))
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// The example Secret's values (`base/secret.example.yaml`), by key.
fn example_secret(root: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root.join("base/secret.example.yaml"))
        .expect("read the example Secret");
    let secret: Value = serde_norway::from_str(&text).expect("the example Secret parses");
    secret["stringData"]
        .as_object()
        .expect("stringData")
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, k).to_string()))
        .collect()
}

/// The files a volume shows, by name: a ConfigMap's data and binaryData, a Secret's items.
fn volume_files(
    docs: &[Value],
    volume: &Value,
    secret: &BTreeMap<String, String>,
) -> Vec<(String, Vec<u8>)> {
    if let Some(name) = volume["configMap"]["name"].as_str() {
        let cm = find(docs, "ConfigMap", name);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(data) = cm["data"].as_object() {
            for (k, v) in data {
                files.push((k.clone(), str_of(v, k).as_bytes().to_vec()));
            }
        }
        if let Some(data) = cm["binaryData"].as_object() {
            for (k, v) in data {
                let text: String = str_of(v, k).split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .expect("binaryData is base64");
                files.push((k.clone(), bytes));
            }
        }
        return files;
    }
    if volume["secret"].is_object() {
        let items = volume["secret"]["items"].as_array().expect("Secret items");
        return items
            .iter()
            .map(|item| {
                let key = str_of(&item["key"], "key");
                let value = secret
                    .get(key)
                    .unwrap_or_else(|| panic!("the example Secret has no {key}"));
                (
                    str_of(&item["path"], "path").to_string(),
                    value.clone().into_bytes(),
                )
            })
            .collect();
    }
    Vec::new()
}

/// Renders `overlay`, checks the Deployment and its companions, then lays out the Pod's
/// mounts under a temporary root and runs `portcullis check` on the mounted configuration
/// with the environment the Pod would get. Returns the rendered documents.
fn render_and_check(root: &Path, overlay: &str, replicas: u64) -> Vec<Value> {
    let docs = render(&root.join(overlay));
    let deployment = find(&docs, "Deployment", "portcullis");
    assert_eq!(deployment["spec"]["replicas"], replicas, "{overlay}");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        &deployment["spec"]["selector"]["matchLabels"], pod_labels,
        "the Deployment selects its own Pods"
    );
    let containers = pod["containers"].as_array().expect("containers");
    let c = &containers[0];

    // Security: non-root, read-only root filesystem, no privilege escalation.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // Service: the Pods, no session affinity. PDB: the Pods.
    let service = find(&docs, "Service", "portcullis");
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert!(
        service["spec"]["sessionAffinity"].is_null()
            || service["spec"]["sessionAffinity"] == "None",
        "{service}"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "portcullis");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], pod_labels);

    // The Pod's mounts, under a temporary root.
    let secret = example_secret(root);
    let pod_root = TempDir::new();
    let at = |mount: &str| pod_root.path().join(mount.trim_start_matches('/'));
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mut mounts: Vec<(String, &Value)> = Vec::new();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = str_of(&m["name"], "volume name");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let path = str_of(&m["mountPath"], "mountPath").to_string();
        assert!(
            m["subPath"].is_null(),
            "{name}: a subPath mount is never updated by kubelet"
        );
        std::fs::create_dir_all(at(&path)).expect("create a mount point");
        for (file, bytes) in volume_files(&docs, volume, &secret) {
            std::fs::write(at(&path).join(file), bytes).expect("write a mounted file");
        }
        mounts.push((path, volume));
    }
    let writable = |dir: &str| {
        mounts
            .iter()
            .find(|(path, _)| path == dir)
            .is_some_and(|(_, v)| v["emptyDir"].is_object())
    };
    for dir in ["/var/cache/portcullis", "/var/lib/portcullis", "/tmp"] {
        assert!(writable(dir), "{dir} is not a writable emptyDir volume");
    }

    // The configuration, as the container's arguments name it.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .expect("serve --config");
    let mut text = std::fs::read_to_string(at(config_path)).expect("the mounted configuration");
    let config: toml::Table = text.parse().expect("the mounted configuration is TOML");
    let admin_listen = config["admin"]["listen"].as_str().expect("[admin] listen");
    let shutdown_grace = config["server"]["shutdown-grace"]
        .as_str()
        .and_then(|g| g.strip_suffix('s'))
        .and_then(|g| g.parse::<u64>().ok())
        .expect("[server] shutdown-grace in whole seconds, e.g. \"30s\"");

    // Probes on the admin listener, the drain inside the grace period.
    let admin_port: u64 = admin_listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("[admin] listen has a port");
    let port_of = |probe: &Value| -> u64 {
        let port = &probe["httpGet"]["port"];
        port.as_u64().unwrap_or_else(|| {
            let name = str_of(port, "probe port");
            c["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port {name}"))
        })
    };
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(port_of(&c["readinessProbe"]), admin_port);
    assert_eq!(port_of(&c["livenessProbe"]), admin_port);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        grace > shutdown_grace + pre_stop,
        "terminationGracePeriodSeconds {grace} must exceed shutdown-grace {} + preStop {pre_stop}",
        shutdown_grace
    );

    // `portcullis check` on it: absolute paths point into the Pod's mounts.
    // Two passes, so a mount under the temporary root (`/tmp`) is not rewritten twice.
    for (i, (path, _)) in mounts.iter().enumerate() {
        text = text.replace(&format!("\"{path}/"), &format!("\"\u{0}{i}\u{0}/"));
        text = text.replace(&format!("\"{path}\""), &format!("\"\u{0}{i}\u{0}\""));
    }
    for (i, (path, _)) in mounts.iter().enumerate() {
        text = text.replace(&format!("\u{0}{i}\u{0}"), &at(path).display().to_string());
    }
    let config_file = at(config_path).with_file_name("rendered.toml");
    std::fs::write(&config_file, &text).expect("write the rendered configuration");
    let mut check = Command::new(bin_path("portcullis"));
    check
        .arg("check")
        .arg("--config")
        .arg(&config_file)
        .env_clear();
    check.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    check.env("XDG_CACHE_HOME", at("/var/cache"));
    for e in c["env"].as_array().expect("env") {
        let name = str_of(&e["name"], "env name");
        if let Some(v) = e["value"].as_str() {
            check.env(name, v);
        } else if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "portcullis-secrets");
            let value = secret
                .get(key)
                .unwrap_or_else(|| panic!("{name}: the example Secret has no {key}"));
            check.env(name, value);
        }
    }
    let out = check.output().expect("run portcullis check");
    assert!(
        out.status.success(),
        "portcullis check rejects the {overlay} configuration:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    docs
}

/// A copy of `deploy/kubernetes` with the plugin components in `base/plugins/`, as the
/// deploy guide has the operator put them.
fn manifests_with_plugins() -> TempDir {
    let dir = TempDir::new();
    copy_dir(&manifests(), dir.path());
    for name in ["authn", "authz"] {
        std::fs::copy(
            plugin_wasm(name),
            dir.path().join(format!("base/plugins/{name}.wasm")),
        )
        .expect("copy a plugin");
    }
    dir
}

#[test]
fn the_base_renders_and_its_configuration_checks() {
    let dir = manifests_with_plugins();
    let docs = render_and_check(dir.path(), "base", 2);
    // The plugins ConfigMap keeps its name (kubelet updates it in place: hot reload) and
    // fits the 1 MiB a ConfigMap may hold.
    let plugins = find(&docs, "ConfigMap", "portcullis-plugins");
    assert_eq!(plugins["metadata"]["name"], "portcullis-plugins");
    // The API server counts the bytes of `data` and the decoded bytes of `binaryData`.
    let volume = serde_json::json!({ "configMap": { "name": "portcullis-plugins" } });
    let bytes: usize = volume_files(&docs, &volume, &BTreeMap::new())
        .iter()
        .map(|(_, b)| b.len())
        .sum();
    assert!(bytes < 1 << 20, "the plugins ConfigMap holds {bytes} bytes");
    // The configuration ConfigMap is hashed: a change rolls the Deployment.
    let config = find(&docs, "ConfigMap", "portcullis-config-");
    assert_ne!(config["metadata"]["name"], "portcullis-config");
}

#[test]
fn the_cluster_overlay_shares_a_session_key_and_redis() {
    let dir = manifests_with_plugins();
    let docs = render_and_check(dir.path(), "overlays/cluster", 3);
    let deployment = find(&docs, "Deployment", "portcullis");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    for (name, key) in [
        ("PORTCULLIS_SESSION_KEY", "session-key"),
        ("PORTCULLIS_REDIS_URL", "redis-url"),
        ("PORTCULLIS_ADMIN_TOKEN", "admin-token"),
    ] {
        let e = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], key);
    }
    let hpa = find(&docs, "HorizontalPodAutoscaler", "portcullis");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "portcullis");
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));
    let redis = find(&docs, "Service", "portcullis-redis");
    assert_eq!(redis["spec"]["ports"][0]["port"], 6379);
    let secret = example_secret(dir.path());
    assert!(secret["redis-url"].contains("portcullis-redis:6379"));
    find(&docs, "Deployment", "portcullis-redis");
}
