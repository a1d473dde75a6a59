//! The bus's two Redis connections: one that publishes (in order, one message at a time)
//! and one subscribed to this replica's channels, both re-made after Redis comes back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use tokio::sync::mpsc;

use super::{Bus, Command, Outbound, counters};

/// First wait after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the subscriber checks its connection with a PING (a connection that died
/// without a reset would otherwise look alive).
const PING_EVERY: Duration = Duration::from_secs(5);

pub(super) fn spawn_publisher(
    bus: &Arc<Bus>,
    client: redis::Client,
    mut rx: mpsc::Receiver<Outbound>,
) -> anyhow::Result<()> {
    let timeout = bus.timeout;
    let conn = crate::policy::redis_connection(client, timeout)?;
    let host = bus.host.clone();
    tokio::spawn(async move {
        let mut conn = conn;
        // While Redis fails, messages are not even tried until this instant.
        let mut down_until: Option<Instant> = None;
        let mut backoff = MIN_BACKOFF;
        while let Some(o) = rx.recv().await {
            if down_until.is_some_and(|t| Instant::now() < t) {
                counters::DROPPED_REDIS.fetch_add(1, Ordering::Relaxed);
                if let Some(done) = o.done {
                    done(None);
                }
                continue;
            }
            let sent =
                tokio::time::timeout(timeout, conn.publish::<_, _, usize>(&o.channel, &o.bytes))
                    .await;
            let heard = match sent {
                Ok(Ok(n)) => {
                    if down_until.take().is_some() {
                        tracing::info!(redis = %host, "cluster bus: publishing again");
                    }
                    backoff = MIN_BACKOFF;
                    counters::PUBLISHED.fetch_add(1, Ordering::Relaxed);
                    Some(n)
                }
                failed => {
                    if down_until.is_none() {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {} ms", timeout.as_millis()),
                        };
                        tracing::error!(redis = %host, %error, "cluster bus: cannot publish; messages stay on the replica that produced them until redis is back");
                    }
                    down_until = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    counters::DROPPED_REDIS.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            if let Some(done) = o.done {
                done(heard);
            }
        }
    });
    Ok(())
}

pub(super) fn spawn_subscriber(
    bus: &Arc<Bus>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let weak = Arc::downgrade(bus);
    let host = bus.host.clone();
    let timeout = bus.timeout.max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        loop {
            let outcome = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => {
                    run(&weak, pubsub, &mut commands, timeout, &mut failing, &host).await
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {} ms", timeout.as_millis())),
            };
            let Some(bus) = weak.upgrade() else { return };
            let was_connected = bus.connected.swap(false, Ordering::Relaxed);
            drop(bus);
            let Err(error) = outcome else { return };
            if was_connected {
                // It worked for a while: start the back-off over.
                backoff = MIN_BACKOFF;
            }
            if !failing {
                failing = true;
                tracing::error!(redis = %host, %error, "cluster bus: subscriber lost redis; streams get only this replica's messages until it is back (retrying)");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// Serves one connection until it fails (`Err`) or the bus is gone (`Ok`).
async fn run(
    weak: &Weak<Bus>,
    pubsub: redis::aio::PubSub,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    timeout: Duration,
    failing: &mut bool,
    host: &str,
) -> Result<(), String> {
    let (mut sink, mut stream) = pubsub.split();
    let (mine, channels) = {
        let Some(bus) = weak.upgrade() else {
            return Ok(());
        };
        (
            bus.replica_channel(&bus.replica_hex),
            bus.followed_channels(),
        )
    };
    let mut wanted = channels;
    wanted.push(mine);
    match tokio::time::timeout(timeout, sink.subscribe(&wanted)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("SUBSCRIBE not confirmed in time".into()),
    }
    {
        let Some(bus) = weak.upgrade() else {
            return Ok(());
        };
        bus.connected.store(true, Ordering::Relaxed);
    }
    counters::CONNECTS.fetch_add(1, Ordering::Relaxed);
    if std::mem::take(failing) {
        tracing::info!(redis = %host, channels = wanted.len(), "cluster bus: subscriber connected again");
    } else {
        tracing::info!(redis = %host, channels = wanted.len(), "cluster bus: subscriber connected");
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(m) = m else {
                    return Err("connection closed".into());
                };
                let Some(bus) = weak.upgrade() else { return Ok(()) };
                bus.dispatch(m.get_channel_name(), m.get_payload_bytes());
            }
            c = commands.recv() => {
                let Some(c) = c else { return Ok(()) };
                let Some(bus) = weak.upgrade() else { return Ok(()) };
                match c {
                    Command::Subscribe(channel, ack) => {
                        if bus.is_followed(&channel) {
                            drop(bus);
                            match tokio::time::timeout(timeout, sink.subscribe(&channel)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => return Err(e.to_string()),
                                Err(_) => return Err("SUBSCRIBE not confirmed in time".into()),
                            }
                        }
                        if let Some(ack) = ack {
                            let _ = ack.send(());
                        }
                    }
                    Command::Unsubscribe(channel) => {
                        if !bus.is_followed(&channel) {
                            drop(bus);
                            match tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => return Err(e.to_string()),
                                Err(_) => return Err("UNSUBSCRIBE not confirmed in time".into()),
                            }
                        }
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no PING answer within {} ms", timeout.as_millis())),
                }
            }
        }
    }
}
