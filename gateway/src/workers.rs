//! The threads that serve client connections: `[server] worker-threads` of them, each a
//! single-threaded tokio runtime. The accept loop hands every new connection to the worker
//! with the fewest open connections, and the connection lives there until it closes: its
//! requests, the tasks they spawn (upstream sessions, streams) and the upstream connections
//! they open (see `upstream/http/pool.rs`) stay on that thread.
//!
//! Why not one work-stealing runtime: with it, a proxied call wakes a second, idle thread
//! to look for work each time it waits (for the client, for the upstream), and on a machine
//! the gateway shares with what it fronts those wake-ups were most of the bare proxy's CPU at
//! low load (docs/BENCHMARKS.md, "Connection threads"). The price is the one every
//! thread-per-core proxy pays (Envoy, nginx): a connection's work is not moved to an idle
//! thread, so one very busy connection (one HTTP/2 connection carrying every agent's calls)
//! uses one core. New connections go to the least loaded worker.
//!
//! Everything else — the accept loop, the admin API, plugin loading and reloads, the cluster
//! bus — runs on the main runtime.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a stopping worker waits for its blocking tasks.
const STOP_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// This thread's worker number, 1-based; 0 on any other thread.
    static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many workers the process started (0 before, and in a process that has none).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Which worker runs the calling thread: 1..=[`count`], or 0 for a thread that is not a
/// worker. Per-thread state (an upstream's idle connections) is kept in `count() + 1` slots.
pub fn index() -> usize {
    INDEX.with(|i| i.get())
}

/// How many workers this process has (0 when connections run on the caller's runtime, as in
/// tests that embed a gateway).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The connection threads.
pub struct Workers {
    workers: Box<[Worker]>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections open on this worker.
    open: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` workers (at least one). Call once per process, before the gateway is
    /// built: the upstreams size their per-thread state by [`count`].
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        COUNT.store(n, Ordering::Relaxed);
        let mut workers = Vec::with_capacity(n);
        for i in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("portcullis-block")
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("portcullis-conn".into())
                .spawn(move || {
                    INDEX.with(|index| index.set(i));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_timeout(STOP_WAIT);
                })?;
            workers.push(Worker {
                handle,
                open: Arc::default(),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers {
            workers: workers.into(),
        })
    }

    /// Runs a connection's future on the worker with the fewest open connections.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let open = Open::count(&worker.open);
        worker.handle.spawn(async move {
            let _open = open;
            connection.await
        });
    }
}

impl Drop for Workers {
    /// Stops every worker: what still runs there (a connection past the drain) is dropped.
    fn drop(&mut self) {
        for worker in self.workers.iter_mut() {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        for worker in self.workers.iter_mut() {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// One open connection, counted while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn count(open: &Arc<AtomicUsize>) -> Open {
        open.fetch_add(1, Ordering::Relaxed);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_stay_there() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, held) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let (tx, mut held) = (tx.clone(), held.clone());
            workers.spawn(async move {
                let first = index();
                let _ = held.wait_for(|go| *go).await;
                tx.send((first, index())).unwrap();
            });
        }
        let _ = release.send(true);
        let mut seen: Vec<(usize, usize)> = (0..4).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, vec![(1, 1), (1, 1), (2, 2), (2, 2)]);
        assert_eq!(index(), 0);
    }
}
