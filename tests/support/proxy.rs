//! A TCP proxy for tests: forwards to the gateway, cuts connections idle longer than a limit
//! (as Cloudflare does after ~100 s), and cuts every open connection on command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A running proxy; dropping it stops accepting.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    idle_cuts: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// Forwards to `target`; connections without traffic in either direction for `idle_limit`
    /// are cut.
    pub async fn start(target: SocketAddr, idle_limit: Option<Duration>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(0u64);
        let idle_cuts = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&idle_cuts);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut_rx = cut_rx.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        pipe(client, server, idle_limit, cut_rx, counter).await;
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            cut,
            idle_cuts,
            accept,
        })
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// How many connections were cut for being idle.
    pub fn idle_cuts(&self) -> u64 {
        self.idle_cuts.load(Ordering::SeqCst)
    }
}

async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    idle_limit: Option<Duration>,
    mut cut: watch::Receiver<u64>,
    idle_cuts: Arc<AtomicU64>,
) {
    cut.borrow_and_update();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    let mut last = Instant::now();
    loop {
        let deadline = idle_limit.map(|l| last + l);
        tokio::select! {
            r = client.read(&mut a) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => { if server.write_all(&a[..n]).await.is_err() { break } last = Instant::now(); }
            },
            r = server.read(&mut b) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => { if client.write_all(&b[..n]).await.is_err() { break } last = Instant::now(); }
            },
            _ = cut.changed() => break,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                idle_cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    // Dropping both streams closes them without a WebSocket close frame, like a proxy restart.
}
