//! A minimal round-robin TCP balancer for the cluster tests: each accepted connection goes to
//! the next backend, with no affinity; a backend that refuses the connection is skipped (as a
//! load balancer's health check would). Clients that open a connection per request (no
//! keep-alive) thus land on a different backend at every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// A running balancer; stops on drop.
#[derive(Debug)]
pub struct RoundRobin {
    addr: SocketAddr,
    /// Which backend each accepted connection went to, in order.
    log: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    pub async fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let (backends, log, next) = (backends.clone(), log.clone(), next.clone());
                    tokio::spawn(async move {
                        for _ in 0..backends.len() {
                            let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                            if let Ok(mut server) = TcpStream::connect(backends[i]).await {
                                let _ = server.set_nodelay(true);
                                log.lock().unwrap().push(i);
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                return;
                            }
                        }
                    });
                }
            })
        };
        RoundRobin { addr, log, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend of every connection so far.
    pub fn connections(&self) -> Vec<usize> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
