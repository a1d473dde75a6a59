//! Cost of an upstream credential by token exchange (criterion): a cache hit (a caller whose
//! exchanged token is cached), and a miss (a new caller: one RFC 8693 exchange against a
//! minimal token endpoint on loopback, form encoding, HTTP round trip and answer parsing).
//!
//! ```sh
//! cargo bench -p portcullis --bench token_exchange
//! ```
//!
//! Numbers are in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::upstream::credential::{Exchange, Subject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A keep-alive token endpoint on loopback answering every request with a fresh token.
async fn endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let issued = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    // One request per read: the form is small and the client waits for
                    // each answer before it sends the next request.
                    let mut got = 0;
                    loop {
                        match conn.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some(head) = text.find("\r\n\r\n") {
                            let length = text[..head]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got >= head + 4 + length {
                                break;
                            }
                        }
                    }
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let body = format!(
                        r#"{{"access_token":"bench-token-{n}","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}}"#
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn exchange(url: &str) -> Exchange {
    let text = format!(
        "[upstreams.u]\nurl = \"https://u.internal/mcp\"\n[upstreams.u.auth]\nkind = \"token-exchange\"\ntoken-endpoint = \"{url}\"\nclient-id = \"portcullis\"\nclient-secret = \"s\"\naudience = \"u\"\nresource = \"https://u.internal/mcp\"\nmax-cached = 1000000\n"
    );
    let config = portcullis::config::parse(&text, "bench.toml", &|_| None).unwrap();
    Exchange::new(config.upstreams["u"].auth.as_ref().unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(endpoint());
    let ex = exchange(&url);
    // A JWT-sized subject token (~800 bytes).
    let token = format!("eyJ{}", "a".repeat(800));
    let cached = Subject::new(&token);
    rt.block_on(ex.token_for(&cached)).unwrap();
    let mut group = c.benchmark_group("token_exchange");
    group.bench_function("hit", |b| {
        b.to_async(&rt)
            .iter(|| async { ex.token_for(&cached).await.unwrap() })
    });
    let next = AtomicU64::new(0);
    group.bench_function("miss_loopback", |b| {
        b.to_async(&rt).iter(|| async {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let subject = Subject::new(&format!("{token}{n}"));
            ex.token_for(&subject).await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
