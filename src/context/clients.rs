//! Cancel keys handed to clients, and which server each client's query is running on; also
//! what the admin console shows of each client, and a flag that asks a client to go.
//!
//! The process id we give a client carries this instance's peer_id in its top bits, so an
//! instance that receives a cancel request can tell which instance issued the key (and send
//! it on to that peer). The secret is random.

use crate::server::{CancelKey, Cancelling};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const SEQ_BITS: u32 = 17;

/// Where a client connected from: a TCP address, or the Unix socket in unix_socket_dir
/// (PgBouncer shows it as `unix` and the listening port), with the client's process id if
/// the kernel told it (0 if not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix { port: u16, pid: u32 },
}

impl Peer {
    /// The address SHOW CLIENTS gives: an IP address or `unix`.
    pub fn addr(&self) -> String {
        match self {
            Peer::Tcp(a) => a.ip().to_string(),
            Peer::Unix { .. } => "unix".into(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Peer::Tcp(a) => a.port(),
            Peer::Unix { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix { port, .. } => write!(f, "unix:{port}"),
        }
    }
}

/// A logged-in client's database and user, in one allocation: every connected client keeps
/// them, for SHOW CLIENTS and KILL.
pub struct LoginNames(Box<str>);

impl LoginNames {
    /// Names hold no NUL (PostgreSQL refuses one in a startup packet), so it separates them.
    pub fn new(database: &str, user: &str) -> LoginNames {
        LoginNames(format!("{database}\0{user}").into_boxed_str())
    }

    pub fn database(&self) -> &str {
        self.0.split('\0').next().unwrap_or_default()
    }

    pub fn user(&self) -> &str {
        self.0.split_once('\0').map_or("", |(_, user)| user)
    }
}

/// Wakes one session. A wake that comes before the session waits is kept for its next wait
/// (as tokio's `Notify` keeps one permit), and the waiting session's waker is kept here rather
/// than in its future: an idle client's wait then costs it no space.
#[derive(Default)]
pub struct Wake {
    woken: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl Wake {
    pub fn notify_one(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and the wake used up) once `notify_one` has been called since the last time.
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        match self.woken.swap(false, Ordering::AcqRel) {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    }

    pub fn notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_woken(cx))
    }

    /// Has `waker` woken by the next `notify_one` instead of the session's own task (while
    /// the session is parked); true if a wake is already due. The wake stays due for the
    /// session's next wait.
    pub fn watch(&self, waker: &std::task::Waker) -> bool {
        self.waker.register(waker);
        self.woken.load(Ordering::Acquire)
    }

    /// Whether a wake is due, without using it up.
    pub fn due(&self) -> bool {
        self.woken.load(Ordering::Acquire)
    }
}

/// A `Wake` as a waker: waking it is `notify_one`.
impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notify_one();
    }
}

/// One client's entry: its secret, and the server it holds right now (if any).
pub struct Slot {
    secret: i32,
    /// The coarse clock's tick (`Context::tick`) when the session began to wait idle in a
    /// way it may be parked from; 0 while it is not.
    pub idle_since: AtomicU32,
    /// Set by the parking lot: the session parks at its next chance, if it still may.
    park: AtomicBool,
    /// How many ticks an idle wait must last before the session is asked to park: none for a
    /// client that has sent nothing since its login, longer for one that came back after a
    /// short pause last time (`client::parked::learn`).
    pub park_after: AtomicU32,
    server: Mutex<Option<Arc<CancelKey>>>,
    pub peer: Peer,
    /// Unix time of the connection, in microseconds.
    pub connected_at: u64,
    /// Unix time of the client's last transaction start, in microseconds.
    pub last_request: AtomicU64,
    /// Set once logged in: its database ("pgsluice" for the admin console) and user.
    pub login: OnceLock<LoginNames>,
    /// Set by KILL and KILL_CLIENT: the session ends at its next chance.
    pub killed: AtomicBool,
    /// Wakes the session to look at `killed` and the process's phase. One per client, so
    /// that waiting on it locks nothing other clients use.
    pub wake: Wake,
    /// The session-only features that pin the client to its server now
    /// (`router::features::Features` bits).
    pub pinned: AtomicU8,
    /// A cancel request came while the client held no server: its work, if it is waiting
    /// for one, is answered as cancelled instead of run.
    cancelled: AtomicBool,
    /// Units of work answered so far: a cancel request that finds the same count a while
    /// after it was delivered met no running query, and is sent again.
    pub answered: AtomicU64,
}

impl Slot {
    /// The cancel key of the server this client holds, if any.
    pub fn server(&self) -> Option<Arc<CancelKey>> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn secret(&self) -> i32 {
        self.secret
    }

    pub fn set(&self, key: Option<Arc<CancelKey>>) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// A cancel request sent on a while ago, once more: Some when the client still holds
    /// the same server and has had no unit answered since (`answered`), so the request
    /// reached the server before the query it was meant for and was dropped there.
    pub fn again(&self, key: &Arc<CancelKey>, answered: u64) -> Option<Cancelling> {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let same = server.as_ref().is_some_and(|k| Arc::ptr_eq(k, key));
        (same && self.answered.load(Ordering::Acquire) == answered)
            .then(|| Cancelling::new(key.clone()))
    }

    /// Whether a cancel request came since the last call (and forgets it). A session asks
    /// before its work waits for a server, so that a cancel meant for work already answered
    /// is dropped, as PostgreSQL drops one that reaches an idle backend; and again while it
    /// waits.
    pub fn take_cancel(&self) -> bool {
        self.cancelled.swap(false, Ordering::Relaxed)
    }

    /// Keeps a cancel request for the session's work as if it came now: for work placed
    /// again after the server the request went to was lost.
    pub fn keep_cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Asks the session to park (and wakes it); false if it was asked already.
    pub fn ask_to_park(&self) -> bool {
        let first = !self.park.swap(true, Ordering::Relaxed);
        if first {
            self.wake.notify_one();
        }
        first
    }

    /// Whether the session was asked to park since the last call (and forgets it).
    pub fn take_park(&self) -> bool {
        self.park.swap(false, Ordering::Relaxed)
    }
}

/// Where a genuine cancel request goes.
pub enum CancelTarget {
    /// The server running the client's work, marked so that it is not pooled again; the
    /// client's count of answered units as the request left, and its slot, to send the
    /// request again (`Slot::again`).
    Server(Cancelling, u64, Arc<Slot>),
    /// No server: the client's session has been told (its waiting work is cancelled).
    Session,
}

type Slots = Arc<Mutex<HashMap<i32, Arc<Slot>>>>;

pub struct Cancels {
    peer_id: u32,
    next: AtomicU32,
    slots: Slots,
    /// The unix second of the last cancel request sent on to every peers_dns instance (high
    /// 32 bits), and how many went that second (low 32).
    fan_outs: AtomicU64,
}

/// Cancel requests sent on to every instance peers_dns finds, at most this many a second:
/// each costs a lookup and a connection to every instance, and requests that match no one
/// (mistyped or forged keys) must not become a flood between instances.
pub const FAN_OUTS_PER_SECOND: u32 = 20;

/// Removes a client's slot when its session ends, however it ends. Owns what it needs, so
/// that a parked client (which has no task to borrow from) can keep it.
pub struct Registration {
    slots: Slots,
    pub process_id: i32,
    pub slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.process_id);
    }
}

impl Cancels {
    pub fn new(peer_id: u16) -> Cancels {
        Cancels {
            peer_id: peer_id.into(),
            next: AtomicU32::new(0),
            slots: Slots::default(),
            fan_outs: AtomicU64::new(0),
        }
    }

    /// Whether a cancel request may be sent on to every peers_dns instance in unix second
    /// `now` (FAN_OUTS_PER_SECOND at most); counts it if so.
    pub fn may_fan_out(&self, now: u32) -> bool {
        let mut seen = self.fan_outs.load(Ordering::Relaxed);
        loop {
            let (second, count) = ((seen >> 32) as u32, seen as u32);
            let next = match second == now {
                true if count >= FAN_OUTS_PER_SECOND => return false,
                true => seen + 1,
                false => (u64::from(now) << 32) | 1,
            };
            match self.fan_outs.compare_exchange_weak(
                seen,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
    }

    /// The peer_id of the instance that gave out `process_id`.
    pub fn issuer(process_id: i32) -> u16 {
        ((process_id as u32) >> SEQ_BITS) as u16
    }

    /// Whether this instance gave out `process_id`.
    pub fn ours(&self, process_id: i32) -> bool {
        u32::from(Cancels::issuer(process_id)) == self.peer_id
    }

    pub fn register(&self, peer: Peer) -> Registration {
        let secret: i32 = rand::random();
        let slot = Arc::new(Slot {
            secret,
            idle_since: AtomicU32::new(0),
            park: AtomicBool::new(false),
            park_after: AtomicU32::new(0),
            server: Mutex::new(None),
            peer,
            connected_at: crate::stats::unix_micros(),
            last_request: AtomicU64::new(0),
            login: OnceLock::new(),
            killed: AtomicBool::new(false),
            wake: Wake::default(),
            pinned: AtomicU8::new(0),
            cancelled: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        });
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let process_id = loop {
            let seq = self.next.fetch_add(1, Ordering::Relaxed) & ((1 << SEQ_BITS) - 1);
            let pid = ((self.peer_id << SEQ_BITS) | seq) as i32;
            // pid 0 looks unset to some drivers; a pid still in use is skipped.
            if pid != 0 && !slots.contains_key(&pid) {
                break pid;
            }
        };
        slots.insert(process_id, slot.clone());
        Registration {
            slots: self.slots.clone(),
            process_id,
            slot,
        }
    }

    /// Every client, by process id.
    pub fn all(&self) -> Vec<(i32, Arc<Slot>)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = slots.iter().map(|(k, v)| (*k, v.clone())).collect();
        all.sort_by_key(|(pid, _)| *pid);
        all
    }

    /// Calls `f` with every client's slot, under the registry's lock (`f` must be brief).
    pub fn each(&self, mut f: impl FnMut(&Slot)) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().for_each(|s| f(s));
    }

    pub fn get(&self, process_id: i32) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&process_id)
            .cloned()
    }

    /// Where a CancelRequest goes: None if the key is not genuine. A client that holds no
    /// server is told itself, and wakes if its work waits for one.
    pub fn cancel(&self, process_id: i32, secret: i32) -> Option<CancelTarget> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&process_id)
            .cloned()?;
        if slot.secret != secret {
            return None;
        }
        // Marked on the server under the lock the session takes to let the server go, so
        // that its release sees the mark, or the cancel sees no server.
        let server = slot.server.lock().unwrap_or_else(|e| e.into_inner());
        match &*server {
            Some(key) => Some(CancelTarget::Server(
                Cancelling::new(key.clone()),
                slot.answered.load(Ordering::Acquire),
                slot.clone(),
            )),
            None => {
                slot.cancelled.store(true, Ordering::Relaxed);
                drop(server);
                slot.wake.notify_one();
                Some(CancelTarget::Session)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_outs_are_bounded_per_second() {
        let c = Cancels::new(1);
        let allowed = (0..50).filter(|_| c.may_fan_out(100)).count();
        assert_eq!(allowed, FAN_OUTS_PER_SECOND as usize);
        assert!(c.may_fan_out(101), "a new second, a new allowance");
        assert!(c.may_fan_out(101));
    }

    #[test]
    fn a_wake_before_the_wait_is_kept_once() {
        let wake = Wake::default();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wake.poll_woken(&mut cx).is_pending());
        wake.notify_one();
        wake.notify_one();
        assert!(wake.poll_woken(&mut cx).is_ready());
        assert!(wake.poll_woken(&mut cx).is_pending());
    }

    #[test]
    fn login_names_give_back_what_they_were_given() {
        for (db, user) in [("app", "alice"), ("", ""), ("a/b c", "\u{e9}t\u{e9}")] {
            let names = LoginNames::new(db, user);
            assert_eq!((names.database(), names.user()), (db, user));
        }
    }

    #[test]
    fn keys_carry_peer_id_and_need_the_secret() {
        let c = Cancels::new(5);
        let r = c.register(Peer::Tcp("127.0.0.1:1".parse().unwrap()));
        assert_eq!(r.process_id >> SEQ_BITS, 5);
        let key = Arc::new(CancelKey::new("x:1".into(), 1, 2));
        let target = |secret| match c.cancel(r.process_id, secret) {
            Some(CancelTarget::Server(on_its_way, _, _)) => Some(Some(on_its_way)),
            Some(CancelTarget::Session) => Some(None),
            None => None,
        };
        r.slot.set(Some(key.clone()));
        let on_its_way = target(r.slot.secret).unwrap().unwrap();
        assert!(Arc::ptr_eq(on_its_way.key(), &key));
        drop(on_its_way);
        assert!(
            key.cancelling(),
            "a server a cancel was sent to is not pooled again"
        );
        assert!(target(r.slot.secret.wrapping_add(1)).is_none());
        assert!(!r.slot.take_cancel());
        // Sent again only while the same unit is unanswered on the same server.
        assert!(r.slot.again(&key, 0).is_some());
        r.slot.answered.fetch_add(1, Ordering::Relaxed);
        assert!(r.slot.again(&key, 0).is_none());
        // With no server, the session is told once.
        r.slot.set(None);
        assert!(matches!(target(r.slot.secret), Some(None)));
        assert!(r.slot.take_cancel());
        assert!(!r.slot.take_cancel());
        let pid = r.process_id;
        drop(r);
        assert!(c.slots.lock().unwrap().get(&pid).is_none());
    }
}
