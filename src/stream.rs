//! A connection that is plain TCP, TLS over TCP or a Unix socket, for clients and servers
//! alike, and how one is opened. Plain connections split into borrowed halves at
//! no cost; TLS ones through tokio's split.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// The address `connect` takes for a server at `host` and `port`: as PostgreSQL and libpq
/// read a host, one that starts with '/' is a directory holding the server's Unix socket
/// (`.s.PGSQL.PORT`); anything else is a TCP host (an IPv6 one in brackets).
pub fn address(host: &str, port: u16) -> String {
    if host.starts_with('/') {
        crate::config::socket_path(host, port)
    } else {
        crate::config::host_port(host, port)
    }
}

/// Opens a plain connection to `addr` (as `address` makes it): a Unix socket's path, or
/// host:port over TCP.
pub async fn connect(addr: &str) -> io::Result<Stream> {
    if addr.starts_with('/') {
        Ok(Stream::Unix(UnixStream::connect(addr).await?))
    } else {
        Ok(Stream::Plain(TcpStream::connect(addr).await?))
    }
}

/// TCP keepalive and `TCP_USER_TIMEOUT` for a socket (PgBouncer's `tcp_*` settings): how a
/// peer that went silent without closing (a cut network path, a stopped host) is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpTuning {
    pub keepalive: bool,
    /// Seconds idle before the first probe, between probes, and probes lost before the
    /// connection is dropped; 0 keeps the system's value.
    pub idle: u64,
    pub interval: u64,
    pub count: u32,
    /// Milliseconds sent data may stay unacknowledged; 0 keeps the system's value.
    pub user_timeout_ms: u64,
}

/// Applies `t` to `tcp`; an option the system refuses is left as it was.
pub fn tune(tcp: &TcpStream, t: &TcpTuning) {
    let sock = socket2::SockRef::from(tcp);
    if t.keepalive {
        let mut ka = socket2::TcpKeepalive::new();
        if t.idle > 0 {
            ka = ka.with_time(std::time::Duration::from_secs(t.idle));
        }
        if t.interval > 0 {
            ka = ka.with_interval(std::time::Duration::from_secs(t.interval));
        }
        if t.count > 0 {
            ka = ka.with_retries(t.count);
        }
        let _ = sock.set_tcp_keepalive(&ka);
    } else {
        let _ = sock.set_keepalive(false);
    }
    if t.user_timeout_ms > 0 {
        let timeout = std::time::Duration::from_millis(t.user_timeout_ms);
        let _ = sock.set_tcp_user_timeout(Some(timeout));
    }
}

/// A plain socket, borrowed: waited on and read without a future, TCP and Unix alike.
#[derive(Clone, Copy)]
pub enum Plain<'a> {
    Tcp(&'a TcpStream),
    Unix(&'a UnixStream),
}

impl Plain<'_> {
    pub fn poll_read_ready(self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Plain::Tcp(s) => s.poll_read_ready(cx),
            Plain::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Runs `f`, an IO on the socket; its WouldBlock clears the socket's readiness for
    /// `interest`, unless a new edge came meanwhile.
    pub fn try_io<R>(
        self,
        interest: tokio::io::Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Plain::Tcp(s) => s.try_io(interest, f),
            Plain::Unix(s) => s.try_io(interest, f),
        }
    }

    pub fn try_read_buf(self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.try_read_buf(buf),
            Plain::Unix(s) => s.try_read_buf(buf),
        }
    }

    /// Ready with how many bytes wait to be read (at most one; 0: the peer closed), taking
    /// none of them.
    pub fn poll_peek_one(self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut byte = [0u8; 1];
        match self {
            Plain::Tcp(s) => s.poll_peek(cx, &mut ReadBuf::new(&mut byte)),
            // tokio has no peek for Unix sockets: the readiness, then MSG_PEEK.
            Plain::Unix(s) => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                let mut byte = [std::mem::MaybeUninit::uninit()];
                let peek = || socket2::SockRef::from(s).peek(&mut byte);
                match s.try_io(tokio::io::Interest::READABLE, peek) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
        }
    }
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A client or server on this host: PostgreSQL offers no TLS there, and needs no TCP
    /// tuning.
    Unix(UnixStream),
    /// Between taking the plain stream out and putting the TLS one in.
    Upgrading,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
            Stream::Unix(_) => "Stream::Unix",
            Stream::Upgrading => "Stream::Upgrading",
        })
    }
}

pub enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
    Unix(tokio::net::unix::ReadHalf<'a>),
}

pub enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
    Unix(tokio::net::unix::WriteHalf<'a>),
}

impl Stream {
    /// Sends `pending` followed by a FATAL ErrorResponse, then closes: the one way a
    /// connection is turned away, by login, session and console alike.
    pub async fn fatal(&mut self, pending: &[u8], code: &str, message: &str) {
        let mut out = bytes::BytesMut::from(pending);
        crate::protocol::backend::error_response(&mut out, "FATAL", code, message);
        let _ = self.write_all(&out).await;
        let _ = self.shutdown().await;
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection is being upgraded")
}

impl Stream {
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Upgrading => unreachable!("a stream is never used while it is upgraded"),
        }
    }

    /// The socket of a plain (TCP or Unix) stream, which holds nothing a read has not taken
    /// from it: waiting for it is waiting for data. None for TLS.
    pub fn plain(&self) -> Option<Plain<'_>> {
        match self {
            Stream::Plain(s) => Some(Plain::Tcp(s)),
            Stream::Unix(s) => Some(Plain::Unix(s)),
            Stream::Tls(_) | Stream::Upgrading => None,
        }
    }

    /// The socket underneath, TLS's too: for a look at whether the peer is still there.
    pub fn socket(&self) -> Option<Plain<'_>> {
        match self {
            Stream::Tls(s) => Some(Plain::Tcp(s.get_ref().0)),
            other => other.plain(),
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Unix(_) | Stream::Upgrading => None,
        }
    }

    /// Whether the other end closed this idle connection or sent something unasked. Costs
    /// no system call unless the socket has shown activity since its last read.
    pub fn stirred_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.socket() {
            Some(socket) => socket.poll_peek_one(&mut cx).is_ready(),
            None => true,
        }
    }

    /// Sends what `out` holds now if the socket takes it without waiting (the usual case: a
    /// query, an answer), so that a link need not turn its loop once more to write it. What
    /// is left, or an error, the next wait meets; TLS, which writes through its own buffer,
    /// always waits.
    pub fn send_now(&self, out: &mut bytes::BytesMut) {
        if out.is_empty() {
            return;
        }
        let sent = match self {
            Stream::Plain(s) => s.try_write(out),
            Stream::Unix(s) => s.try_write(out),
            Stream::Tls(_) | Stream::Upgrading => return,
        };
        if let Ok(n) = sent {
            bytes::Buf::advance(out, n);
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// The system user the peer runs as, on a Unix socket (the kernel says, as PostgreSQL's
    /// `peer` authentication asks it).
    pub fn peer_uid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => s.peer_cred().ok().map(|c| c.uid()),
            _ => None,
        }
    }

    /// The common name of the certificate a TLS client showed (and client_tls_ca_file's CA
    /// signed: the handshake refused any other), if it showed one.
    pub fn client_certificate_name(&self) -> Option<String> {
        let Stream::Tls(tls) = self else {
            return None;
        };
        let tokio_rustls::TlsStream::Server(server) = &**tls else {
            return None;
        };
        let first = server.get_ref().1.peer_certificates()?.first()?;
        crate::tls::common_name(first)
    }

    /// Whether the peer is a process of this one's own user, on a Unix socket.
    pub fn peer_is_own_user(&self) -> bool {
        // SAFETY: getuid cannot fail and touches no memory of ours.
        let own = unsafe { libc::getuid() };
        self.peer_uid() == Some(own)
    }

    /// Takes the plain TCP stream out, to wrap it in TLS.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Upgrading) {
            Stream::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_is_read_as_libpq_reads_it() {
        let cases = [
            ("/var/run/postgresql", "/var/run/postgresql/.s.PGSQL.5432"),
            ("/tmp/", "/tmp/.s.PGSQL.5432"),
            ("db.internal", "db.internal:5432"),
            ("::1", "[::1]:5432"),
        ];
        for (host, addr) in cases {
            assert_eq!(super::address(host, 5432), addr);
        }
    }
}
