//! A TCP proxy in front of the broker whose connections a test can cut.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    listener: Option<TcpListener>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Binds first so the broker can advertise the proxy's address.
    pub async fn bind() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Proxy {
            addr: listener.local_addr().unwrap(),
            listener: Some(listener),
            connections: Default::default(),
            accept: None,
        }
    }

    pub fn start(&mut self, upstream: SocketAddr) {
        let listener = self.listener.take().unwrap();
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().push(task);
            }
        }));
    }

    /// Drops every open connection, as a network failure would.
    pub fn cut(&self) -> usize {
        let tasks: Vec<_> = self.connections.lock().drain(..).collect();
        let n = tasks.iter().filter(|t| !t.is_finished()).count();
        for t in tasks {
            t.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(a) = self.accept.take() {
            a.abort();
        }
    }
}
