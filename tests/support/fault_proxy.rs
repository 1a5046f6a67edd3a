//! A TCP proxy for network faults (issue 21, docs/API.md §14): in front of PostgreSQL or of a
//! sessiond instance, it forwards bytes both ways, and on command
//! - goes **silent**: every connection, open or new, stops carrying bytes in either direction,
//!   without closing or resetting anything (a dropped route, a stuck firewall). Bytes already
//!   read are held, not lost, so [`FaultProxy::heal`] resumes each connection where it stopped,
//!   as TCP does when a partition ends;
//! - adds **latency** to every chunk in both directions;
//! - **cuts** every open connection (a reset).
//!
//! New connections are accepted by the proxy's own socket whatever the mode (the kernel answers
//! the handshake); while silent, nothing they send reaches the upstream and nothing comes back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    silent: bool,
    latency: Duration,
    /// Bumped to cut every open connection.
    generation: u64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        FaultProxy::start_on(0, upstream).await
    }

    /// A proxy on 127.0.0.1:`port` (0: any free port) forwarding to `upstream`.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("the proxy's port");
        let addr = listener.local_addr().expect("a bound address");
        let mode = watch::Sender::new(Mode { silent: false, latency: Duration::ZERO, generation: 0 });
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let _ = inbound.set_nodelay(true);
                let modes = modes.clone();
                tokio::spawn(async move {
                    let generation = modes.borrow().generation;
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let mut cut = modes.subscribe();
                    tokio::select! {
                        _ = pump(ri, wo, modes.subscribe()) => {}
                        _ = pump(ro, wi, modes.subscribe()) => {}
                        _ = cut.wait_for(|m| m.generation != generation) => {}
                    }
                });
            }
        });
        FaultProxy { addr, mode, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every connection's bytes, both ways, without closing anything.
    pub fn silence(&self) {
        self.mode.send_modify(|m| m.silent = true);
    }

    /// Resumes every connection where it stopped.
    pub fn heal(&self) {
        self.mode.send_modify(|m| m.silent = false);
    }

    /// Delays every chunk by `latency` (zero: none).
    pub fn latency(&self, latency: Duration) {
        self.mode.send_modify(|m| m.latency = latency);
    }

    /// Closes every open connection (new ones are forwarded again).
    pub fn cut(&self) {
        self.mode.send_modify(|m| m.generation += 1);
    }
}

/// Copies `from` to `to`: each chunk leaves `latency` after it arrived (chunks in flight
/// together, as on a network with that one-way delay), and is held while the proxy is silent;
/// ends when either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut mode = mode;
        while let Some((arrived, chunk)) = rx.recv().await {
            let latency = mode.borrow().latency;
            tokio::time::sleep_until(arrived + latency).await;
            // Silent: hold it (and everything behind it) until the network heals.
            if mode.wait_for(|m| !m.silent).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer finishes what the reader queued before the connection ends.
    tokio::join!(reader, writer);
}
