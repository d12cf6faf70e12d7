//! Node-to-node RPC: length-prefixed postcard frames over TCP.
//!
//! Why this and not gRPC: openraft's messages are already serde types, so a framed codec needs
//! no schema or code generation, and postcard (compact, maintained, no_std-grade careful about
//! lengths) keeps an append of small writes to a few bytes over the entries themselves. tonic
//! would add HTTP/2 and protobuf for one request/response pair per call.
//!
//! Each outgoing connection carries one call at a time (openraft holds one client per target
//! and awaits each call), is opened lazily, and is dropped on any error so the next call
//! reconnects. Every call is bounded by openraft's deadline for it. Snapshots travel in chunks
//! (`snapshot_max_chunk_size`) through openraft's chunked transport. Pub/Sub messages forwarded
//! to peers ([`crate::pubsub`]) travel on connections of their own.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::rustls;

use crate::pubsub::{Inbox, Message};
use crate::{Node, NodeId, TypeConfig};

/// The largest frame accepted: bounds the memory one peer can make this node allocate. An
/// append carries at most 32 entries of at most [`crate::TXN_BYTES_MAX`] (12 MiB) each.
pub const FRAME_BYTES_MAX: usize = 512 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
enum Request {
    Hello,
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Messages published on the sending node, in order, for this node's subscribers.
    Publish(Vec<Message>),
}

#[derive(Serialize, Deserialize)]
enum Response {
    Hello(NodeId, Node),
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Published,
}

/// A connection between nodes: plain TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for S {}
type Conn = Box<dyn Stream>;

/// Mutual TLS between nodes: each node's certificate serves its raft port and identifies it when
/// it connects out, and both sides require a certificate the cluster's CA signed.
#[derive(Clone)]
pub struct NodeTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

/// How this node reaches its peers.
#[derive(Clone, Default)]
pub struct Transport {
    /// Outgoing connections come from this address (the node's bind address), so that peers
    /// and firewalls see one address per node.
    pub source: Option<IpAddr>,
    pub tls: Option<NodeTls>,
}

impl Transport {
    /// Connects to `addr` (and, with TLS, completes the handshake, checking the peer's
    /// certificate against the host part of `addr`), within [`CONNECT_TIMEOUT`].
    async fn connect(&self, addr: &str) -> io::Result<Conn> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}"));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, self.source))
            .await
            .map_err(|_| timed_out())??;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let s = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, tcp))
            .await
            .map_err(|_| timed_out())??;
        Ok(Box::new(s))
    }
}

async fn write_frame<T: Serialize, S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    v: &T,
) -> io::Result<()> {
    let body = postcard::to_allocvec(v).map_err(io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::other(format!(
            "frame of {} bytes exceeds {FRAME_BYTES_MAX}",
            body.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await
}

async fn read_frame<T: for<'a> Deserialize<'a>, S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
) -> io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer sent a frame of {len} bytes; the limit is {FRAME_BYTES_MAX}"),
        ));
    }
    // Grown as bytes arrive, not allocated from the declared length: a peer that announces
    // 512 MiB and sends nothing costs nothing.
    let mut body = Vec::with_capacity(len.min(1 << 20));
    (&mut *s).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the peer closed the connection after {} of {len} bytes of a frame",
                body.len()
            ),
        ));
    }
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Asks the node listening on `addr` who it is.
pub async fn hello(addr: &str, transport: &Transport) -> io::Result<(NodeId, Node)> {
    let mut s = transport.connect(addr).await?;
    write_frame(&mut s, &Request::Hello).await?;
    match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut s)).await {
        Ok(Ok(Response::Hello(id, node))) => Ok((id, node)),
        Ok(Ok(_)) => Err(io::Error::other("unexpected reply to hello")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply from {addr}"),
        )),
    }
}

/// Sends a batch of Pub/Sub messages on `conn` (connecting first if there is none), and waits
/// for the peer to acknowledge it; an error leaves the connection to be dropped.
pub(crate) async fn publish(
    conn: &mut Option<Conn>,
    transport: &Transport,
    addr: &str,
    batch: Vec<Message>,
) -> io::Result<()> {
    let s = match conn {
        Some(s) => s,
        None => conn.insert(transport.connect(addr).await?),
    };
    write_frame(s, &Request::Publish(batch)).await?;
    match read_frame(s).await? {
        Response::Published => Ok(()),
        _ => Err(io::Error::other("unexpected reply to publish")),
    }
}

/// Serves raft RPCs from peers until the listener fails; with `tls`, only over mutual TLS.
/// Forwarded Pub/Sub messages go to `inbox`.
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    me: (NodeId, Node),
    tls: Option<tokio_rustls::TlsAcceptor>,
    inbox: Inbox,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "raft listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let raft = raft.clone();
        let me = me.clone();
        let tls = tls.clone();
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut s: Conn = match tls {
                None => Box::new(tcp),
                Some(a) => match tokio::time::timeout(CONNECT_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "raft connection refused: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "raft connection refused: TLS handshake timed out");
                        return;
                    }
                },
            };
            loop {
                let req: Request = match read_frame(&mut s).await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            tracing::debug!(%peer, error = %e, "raft connection closed");
                        }
                        return;
                    }
                };
                let resp = match req {
                    Request::Hello => Response::Hello(me.0, me.1.clone()),
                    Request::Append(r) => Response::Append(raft.append_entries(r).await),
                    Request::Vote(r) => Response::Vote(raft.vote(r).await),
                    Request::Snapshot(r) => Response::Snapshot(raft.install_snapshot(r).await),
                    Request::Publish(batch) => {
                        inbox.deliver(batch);
                        Response::Published
                    }
                };
                if write_frame(&mut s, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Makes a client per peer.
pub struct Network {
    pub transport: Transport,
    /// Idle connections by address. openraft makes a new client for every leadership check
    /// (each linearizable read); without reuse, each read opened a connection to every peer,
    /// and a read-heavy load ran the machine out of ports (28,000 sockets in TIME_WAIT).
    pub pool: Pool,
}

/// Idle connections by peer address, at most [`POOL_PER_PEER`] each.
pub type Pool = Arc<Mutex<HashMap<String, Vec<Conn>>>>;
const POOL_PER_PEER: usize = 8;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            target,
            addr: node.raft.clone(),
            transport: self.transport.clone(),
            stream: None,
            pool: self.pool.clone(),
        }
    }
}

/// A connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    transport: Transport,
    stream: Option<Conn>,
    pool: Pool,
}

impl Drop for Peer {
    /// A connection that finished its last call cleanly goes back to the pool.
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let idle = pool.entry(self.addr.clone()).or_default();
            if idle.len() < POOL_PER_PEER {
                idle.push(s);
            }
        }
    }
}

/// Connects to `addr`, from `source` if given.
async fn connect(addr: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let to = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == ip.is_ipv4())
        .ok_or_else(|| io::Error::other(format!("{addr} has no address of {ip}'s family")))?;
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// Why a call failed before the peer answered.
enum CallError {
    Connect(io::Error),
    Io(io::Error),
}

impl<E: std::error::Error> From<CallError> for RPCError<NodeId, Node, E> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Io(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl Peer {
    async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, CallError> {
        // The connection is out of `self` while the call runs and comes back only with a whole
        // reply: if the call is dropped half way (openraft's own deadline), the connection goes
        // with it, so no later call can read this call's late reply as its own.
        let r = tokio::time::timeout(ttl, self.call_inner(req)).await;
        r.unwrap_or_else(|_| {
            Err(CallError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no reply from node {} ({}) within {ttl:?}",
                    self.target, self.addr
                ),
            )))
        })
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, CallError> {
        let mut conn = match self.stream.take() {
            Some(c) => Some(c),
            None => {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                pool.get_mut(&self.addr).and_then(Vec::pop)
            }
        };
        if let Some(mut c) = conn.take() {
            // An idle connection may have been closed by the peer (a restart): then the call
            // is sent again on a new one. Raft's RPCs may be repeated safely.
            match Self::exchange(&mut c, req).await {
                Ok(r) => {
                    self.stream = Some(c);
                    return Ok(r);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.addr, error = %e, "idle connection failed; reconnecting")
                }
            }
        }
        let mut c = self
            .transport
            .connect(&self.addr)
            .await
            .map_err(CallError::Connect)?;
        let r = Self::exchange(&mut c, req).await.map_err(CallError::Io)?;
        self.stream = Some(c);
        Ok(r)
    }

    async fn exchange(s: &mut Conn, req: &Request) -> io::Result<Response> {
        write_frame(s, req).await?;
        read_frame(s).await
    }
}

/// A peer's own answer that the call failed.
fn remote<T, E: std::error::Error>(
    target: NodeId,
    r: Result<T, RaftError<NodeId, E>>,
) -> Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
    r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    RPCError::Network(NetworkError::new(&io::Error::other(
        "peer sent a reply of the wrong kind",
    )))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(&Request::Append(rpc), option.hard_ttl()).await? {
            Response::Append(r) => remote(self.target, r),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&Request::Snapshot(rpc), option.hard_ttl())
            .await?
        {
            Response::Snapshot(r) => remote(self.target, r),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(&Request::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(r) => remote(self.target, r),
            _ => Err(unexpected()),
        }
    }
}
