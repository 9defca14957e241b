//! A TCP proxy on loopback that a test can cut: the way to take one node
//! off etcd (or any peer) without touching the others. Cut, it black-holes:
//! bytes stop flowing both ways and new connections hang, as in a network
//! partition, so clients see timeouts rather than quick refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::port::free_port;

pub struct TcpProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

async fn wait_while_cut(cut: &AtomicBool) {
    while cut.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        wait_while_cut(&cut).await;
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a cut are held back too.
        wait_while_cut(&cut).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Forwards 127.0.0.1:`port` (a free port) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    wait_while_cut(&flag).await;
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, flag.clone()),
                        pump(server_read, client_write, flag.clone())
                    );
                });
            }
        });
        Ok(Self { port, cut, task })
    }

    /// Black-holes the path until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
