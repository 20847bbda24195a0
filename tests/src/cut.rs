//! A TCP forwarder a test can cut and restore: it stands between a service
//! and its database, so "the database is lost while running" is a real
//! broken network path, not a mock.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Forwards `listen` → `target` until [`Cut::cut`]; [`Cut::restore`] opens
/// the same address again.
pub struct Cut {
    listen: SocketAddr,
    target: SocketAddr,
    tasks: JoinSet<()>,
}

impl Cut {
    /// Starts forwarding from `listen` (port 0 picks one) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let mut cut = Self {
            listen: listener.local_addr()?,
            target,
            tasks: JoinSet::new(),
        };
        cut.serve(listener);
        Ok(cut)
    }

    /// The address the service should use.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Closes the listener and every open connection: new connects are
    /// refused, established ones see their socket closed.
    pub async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Listens and forwards again on the same address.
    pub async fn restore(&mut self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.listen).await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        // Connections are tasks of the accept task's own set, so aborting
        // the accept task drops them all.
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }
}
