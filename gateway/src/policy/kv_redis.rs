//! The plugins' key-value store in Redis (`[cluster] redis`), shared by every replica so a
//! rate limit is exact cluster-wide.
//!
//! - One multiplexed connection per gateway (`redis`'s `ConnectionManager`), made lazily and
//!   re-made after Redis restarts: no gateway restart needed.
//! - Every call is bounded by `[cluster] redis-timeout` (connecting included). Past it, or on
//!   any error, the call fails with a [`KvError`]; the host fails the plugin's evaluation and
//!   the plugin's `fail-open` decides. Failures are counted for `/metrics`, and the first
//!   failure after a success (and the first success after failures) is logged, never one line
//!   per call.
//! - Same semantics as [`super::MemoryKv`]: `incr` and `compare-and-swap` are Lua scripts
//!   (atomic in Redis), a counter is 8 bytes, a little-endian `i64`, saturating; a TTL is set
//!   when a counter is created, and `set`/`compare-and-swap` replace the expiry.
//! - Keys are `<redis-prefix>kv:<plugin>\x1f<key>` (the host adds the plugin part).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::kv::{KvError, KvStore};
use crate::config::RedisUrl;

/// Adds a 64-bit delta (as two 32-bit halves, exact in Lua's doubles) to an 8-byte
/// little-endian counter, saturating at the `i64` bounds. A missing, expired or malformed
/// value starts from 0 and takes the TTL (ARGV[3], ms; 0: none); an existing one keeps its
/// expiry. Returns the new 8 bytes.
const INCR: &str = r#"
local v = redis.call('GET', KEYS[1])
local lo, hi, fresh = 0, 0, true
if v and string.len(v) == 8 then
  lo, hi = struct.unpack('<I4i4', v)
  fresh = false
end
lo = lo + tonumber(ARGV[1])
local carry = math.floor(lo / 4294967296)
lo = lo - carry * 4294967296
hi = hi + tonumber(ARGV[2]) + carry
if hi > 2147483647 then
  lo, hi = 4294967295, 2147483647
elseif hi < -2147483648 then
  lo, hi = 0, -2147483648
end
local packed = struct.pack('<I4i4', lo, hi)
if not fresh then
  redis.call('SET', KEYS[1], packed, 'KEEPTTL')
elseif tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], packed, 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], packed)
end
return packed
"#;

/// Stores ARGV[3] if the key holds ARGV[2] (ARGV[1] = '1') or is absent (ARGV[1] = '0'),
/// with the TTL ARGV[4] (ms; 0: none). 1 when it did.
const CAS: &str = r#"
local v = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if v ~= ARGV[2] then return 0 end
elseif v then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"#;

pub struct RedisKv {
    conn: ConnectionManager,
    host: String,
    prefix: String,
    timeout: Duration,
    incr: Script,
    cas: Script,
    /// Whether the last call succeeded: failures are logged on the transition only.
    healthy: AtomicBool,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("host", &self.host)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Milliseconds for Redis: a TTL under a millisecond still expires (1 ms), none is 0.
fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// A multiplexed connection to Redis that connects on first use and again after Redis
/// restarts, each attempt bounded by `timeout` (shared by the key-value store and the
/// cluster bus's publisher).
pub(crate) fn lazy_connection(
    client: redis::Client,
    timeout: Duration,
) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnect attempts inside one call stay within the call's timeout; the next call
        // tries again.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(timeout);
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))
}

impl RedisKv {
    /// A store on `url`. Does not connect: the first call does (within the timeout), so a
    /// gateway starts while Redis is still coming up and its plugins' fail modes apply
    /// meanwhile. Must be called inside a tokio runtime.
    pub fn new(url: &RedisUrl, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose())
            .map_err(|e| anyhow::anyhow!("cluster.redis: {}", e.category()))?;
        let conn = lazy_connection(client, timeout)?;
        Ok(RedisKv {
            conn,
            host: url.host().to_string(),
            prefix: format!("{prefix}kv:"),
            timeout,
            incr: Script::new(INCR),
            cas: Script::new(CAS),
            healthy: AtomicBool::new(true),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one call under the timeout and keeps the health flag.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(KvError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(KvError::Unavailable(e.to_string())),
            Err(_) => Err(KvError::Timeout(self.timeout)),
        };
        match &outcome {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.host, "the key-value store (redis) answers again");
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(redis = %self.host, error = %e, "the key-value store (redis) fails; plugins that use it fail until it is back (their fail-open setting decides)");
                }
            }
        }
        outcome
    }

    /// Whether Redis answers a PING within the timeout (for start-up and readiness logs).
    pub async fn ping(&self) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(drop)
    }
}

#[async_trait::async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        self.bounded(async move { conn.get::<_, Option<Vec<u8>>>(key).await })
            .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        let ms = ttl_ms(ttl);
        self.bounded(async move {
            if ms > 0 {
                conn.pset_ex::<_, _, ()>(key, value, ms).await
            } else {
                conn.set::<_, _, ()>(key, value).await
            }
        })
        .await
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        // delta = lo + hi * 2^32 with lo in [0, 2^32) and hi a signed 32-bit value.
        let lo = delta & 0xffff_ffff;
        let hi = delta >> 32;
        let mut call = self.incr.key(key);
        call.arg(lo).arg(hi).arg(ttl_ms(ttl));
        let bytes: Vec<u8> = self
            .bounded(async move { call.invoke_async(&mut conn).await })
            .await?;
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| KvError::Unavailable("a counter came back malformed".into()))?;
        Ok(i64::from_le_bytes(bytes))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let mut conn = self.conn.clone();
        let mut call = self.cas.key(self.key(key));
        call.arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .arg(ttl_ms(ttl));
        let done: i64 = self
            .bounded(async move { call.invoke_async(&mut conn).await })
            .await?;
        Ok(done == 1)
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        self.bounded(async move { conn.del::<_, ()>(key).await })
            .await
    }
}

/// The key-value store `[cluster]` asks for: Redis when `redis` is set (its reachability is
/// logged, not required: plugins' fail modes apply until it answers), else `None` (the
/// in-process store).
pub async fn plugin_kv(
    cfg: &crate::config::ClusterConfig,
) -> anyhow::Result<Option<std::sync::Arc<dyn KvStore>>> {
    let Some(url) = &cfg.redis else {
        return Ok(None);
    };
    let kv = RedisKv::new(url, &cfg.redis_prefix, cfg.redis_timeout)?;
    // On failure `bounded` has logged the error already.
    if kv.ping().await.is_ok() {
        tracing::info!(redis = %url.host(), "plugins' key-value store: redis");
    }
    Ok(Some(std::sync::Arc::new(kv)))
}

/// Round trips of the store's calls to a real Redis. Run with a server of your own:
/// `redis-server --port 6391 --save '' &` then
/// `PORTCULLIS_BENCH_REDIS=redis://127.0.0.1:6391 cargo test --workspace --lib redis_kv_call_cost -- --ignored --nocapture`.
#[cfg(test)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against a Redis you start"]
async fn redis_kv_call_cost() {
    let url: crate::config::RedisUrl = serde_json::from_value(serde_json::Value::String(
        std::env::var("PORTCULLIS_BENCH_REDIS").expect("PORTCULLIS_BENCH_REDIS"),
    ))
    .unwrap();
    let kv = RedisKv::new(&url, "bench:", Duration::from_secs(1)).unwrap();
    let mut samples = std::collections::BTreeMap::<&str, Vec<Duration>>::new();
    for i in 0..5_000u64 {
        let key = format!("k{}", i % 64);
        let t = std::time::Instant::now();
        let seen = kv.get(&key).await.unwrap();
        samples.entry("get").or_default().push(t.elapsed());
        let t = std::time::Instant::now();
        kv.compare_and_swap(&key, seen.as_deref(), i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
        samples
            .entry("compare-and-swap")
            .or_default()
            .push(t.elapsed());
        let t = std::time::Instant::now();
        kv.incr("n", 1, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        samples.entry("incr").or_default().push(t.elapsed());
    }
    for (op, mut s) in samples {
        s.sort();
        println!(
            "{op}: p50 {:?}, p99 {:?}",
            s[s.len() / 2],
            s[s.len() * 99 / 100]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `redis-server` on a free loopback port (installed by `scripts/ensure-redis`).
    struct Server(std::process::Child, String);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/ensure-redis");
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(child, format!("redis://{addr}"))
    }

    fn store(url: &str) -> RedisKv {
        let url: RedisUrl =
            serde_json::from_value(serde_json::Value::String(url.to_string())).unwrap();
        RedisKv::new(&url, "t:", Duration::from_secs(2)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counters_swaps_and_expiry_behave_like_the_memory_store() {
        let s = server();
        let kv = store(&s.1);
        assert_eq!(kv.incr("a", 2, None).await.unwrap(), 2);
        assert_eq!(kv.incr("a", -5, None).await.unwrap(), -3);
        assert_eq!(
            kv.get("a").await.unwrap(),
            Some((-3i64).to_le_bytes().to_vec()),
            "a counter is 8 bytes, little-endian"
        );
        assert_eq!(
            kv.incr("big", i64::MAX - 1, None).await.unwrap(),
            i64::MAX - 1
        );
        assert_eq!(
            kv.incr("big", 10, None).await.unwrap(),
            i64::MAX,
            "saturates"
        );
        assert_eq!(kv.incr("small", i64::MIN, None).await.unwrap(), i64::MIN);
        assert_eq!(kv.incr("small", -1, None).await.unwrap(), i64::MIN);
        assert_eq!(
            kv.incr("odd", 0x1_0000_0001, None).await.unwrap(),
            0x1_0000_0001
        );
        assert_eq!(
            kv.incr("odd", 0xffff_ffff, None).await.unwrap(),
            0x2_0000_0000
        );
        kv.set("text", b"x".to_vec(), None).await.unwrap();
        assert_eq!(
            kv.incr("text", 1, None).await.unwrap(),
            1,
            "a non-counter restarts"
        );

        assert!(
            kv.compare_and_swap("k", None, b"1".to_vec(), None)
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("k", None, b"2".to_vec(), None)
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("k", Some(b"0"), b"2".to_vec(), None)
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("k", Some(b"1"), b"2".to_vec(), None)
                .await
                .unwrap()
        );
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));

        kv.incr("ttl", 1, Some(Duration::from_millis(50)))
            .await
            .unwrap();
        kv.set("gone", b"y".to_vec(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            kv.incr("ttl", 1, None).await.unwrap(),
            1,
            "expired counters restart"
        );
        assert_eq!(kv.get("gone").await.unwrap(), None);
        kv.delete("k").await.unwrap();
        assert_eq!(kv.get("k").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_redis_fails_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kv = store(&format!("redis://127.0.0.1:{port}"));
        let e = kv.get("a").await.unwrap_err();
        assert!(e.to_string().contains("key-value store (redis)"), "{e}");
    }
}
