//! The sockets clients connect to: the TCP port (which another process may share under
//! so_reuseport) and the Unix socket `.s.PGSQL.<port>` in unix_socket_dir, where a client on
//! this host reaches pgsluice as it would reach PostgreSQL.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// A listening socket on `addr` ("host:port", the host perhaps an IPv6 address in brackets);
/// with `reuse_port`, one that another process may bind too (SO_REUSEPORT), so a new
/// pgsluice can take over the port while this one drains.
pub async fn tcp(addr: &str, reuse_port: bool) -> io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr).await;
    }
    let addr = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address"))
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The Unix socket file this process listens on. Dropped, it removes the file, unless
/// another process has put its own in its place meanwhile (a handover under so_reuseport).
pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    /// The file's device and inode, to know it is still ours.
    id: (u64, u64),
}

/// How `SocketFile::bind` treats a live socket already at the path: another process
/// serving it is an error, unless this one takes over from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    TakeOver,
}

impl SocketFile {
    /// Listens on `dir`/.s.PGSQL.`port` with `mode` and, if not empty, `group`. A file left
    /// by a process that is gone is replaced, as PostgreSQL and PgBouncer do.
    pub fn bind(
        dir: &str,
        port: u16,
        mode: u32,
        group: &str,
        existing: Existing,
    ) -> io::Result<SocketFile> {
        let path = PathBuf::from(crate::config::socket_path(dir, port));
        if path.exists() {
            let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
            if live && existing == Existing::Refuse {
                let why = format!("{} is in use by another process", path.display());
                return Err(io::Error::new(io::ErrorKind::AddrInUse, why));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if !group.is_empty() {
            std::os::unix::fs::chown(&path, None, Some(group_id(group)?))?;
        }
        let meta = std::fs::metadata(&path)?;
        Ok(SocketFile {
            listener,
            id: (meta.dev(), meta.ino()),
            path,
        })
    }

    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The id of the group `name` (or a number), from the system's group database.
fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let not_found = || {
        let why = format!("unix_socket_group: no group {name}");
        io::Error::new(io::ErrorKind::NotFound, why)
    };
    let c_name = std::ffi::CString::new(name).map_err(|_| not_found())?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be filled in.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to memory of this frame that outlives the call, and `buf`'s
    // length is what is passed; getgrnam_r writes only within them.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(not_found());
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_name_or_number() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("4321").unwrap(), 4321);
        assert!(group_id("no-such-group-here").is_err());
    }
}
