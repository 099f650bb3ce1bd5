//! Idle clients without a task of their own. Once more than a few clients are connected
//! (`idle::FEW_CLIENTS`), one that has waited idle for a moment, with nothing buffered, no
//! server and no notifications to deliver, is parked: its socket leaves tokio's IO driver for
//! one epoll that the lot watches, and its session keeps only what outlives a transaction
//! (`session::Resting`). When the client sends something or closes, or its slot is woken
//! (KILL, a shutdown, a cancel request), or its client_idle_timeout comes, a new task takes it
//! up where it left off. A parked client costs its socket, its slot and its settings; its
//! tokio task and IO registration would cost about 1.3 KiB more.

use super::session::{live, Client, Resting};
use crate::context::clients::{Registration, Slot, Wake};
use crate::context::{Admitted, Context};
use crate::stream::Stream;
use bytes::BytesMut;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A session that has waited idle for more than this many ticks of the coarse clock is asked
/// to park: after 250 to 500 ms of idleness. A client that has sent nothing since its login
/// (`FRESH`) is asked at the first tick it is seen idle: a crowd logging in at once (after a
/// restart, a deploy) would otherwise hold a task each for longer, and the memory freed
/// from those the allocator seldom gives back to the system.
const PARK_AFTER_TICKS: u32 = 1;
/// `Slot::park_after` of a client that has sent nothing since its login.
const FRESH: u32 = 0;
/// But a client that works in a quick rhythm (a pool's connection used every second or so)
/// is not parked between its transactions: taking it up costs a task and a few system calls
/// each time, and the latency of its next message. One that paused at most half this long
/// last time waits twice that pause before it is asked; one that paused longer is parked as
/// soon as any, so that the memory of a crowd that worked once is back at once.
const RHYTHM_TICKS: u32 = 12;

const TICK: Duration = Duration::from_millis(250);

/// Once this many more clients are parked than at the fewest since memory was last given
/// back, it is given back again (`give_back`).
const GIVE_BACK_AFTER: usize = 64;

/// Readiness events taken from the lot's epoll at once.
const EVENTS: usize = 256;

/// How long (in ticks) a client that last paused `gap` ticks waits idle before it is asked
/// to park (`PARK_AFTER_TICKS` at least).
fn rhythm(gap: u32) -> u32 {
    if gap <= RHYTHM_TICKS / 2 {
        PARK_AFTER_TICKS.max(gap * 2)
    } else {
        PARK_AFTER_TICKS
    }
}

/// What a client's wait before being asked to park is once it has sent something after
/// waiting `gap` ticks: its rhythm, if the pause says anything of it (data there at once,
/// as for a client just taken up from the lot, which learnt its pause there, does not).
pub(super) fn learn(slot: &Slot, gap: u32) {
    if gap > 0 {
        slot.park_after.store(rhythm(gap), Ordering::Relaxed);
    } else if slot.park_after.load(Ordering::Relaxed) == FRESH {
        slot.park_after.store(PARK_AFTER_TICKS, Ordering::Relaxed);
    }
}

/// Whether a client idle since tick `since` (0: not idle where it may park), at tick `now`,
/// has waited long enough to be asked to park.
fn due(now: u32, since: u32, park_after: u32) -> bool {
    since != 0 && now.wrapping_sub(since) > park_after
}

/// A parked client: its socket (watched by the lot), what its connection holds, its session
/// (boxed: in place, the shelf would hold the space of as many as were ever parked at once,
/// where a box reuses the holes the clients' tasks left).
struct Parked {
    socket: Socket,
    reg: Registration,
    admitted: Admitted,
    rest: Box<Resting>,
    /// The coarse clock's tick its idleness began at (0: unknown).
    since: u32,
}

/// A parked client's socket, as the lot's epoll watches it.
enum Socket {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Socket {
    /// The socket of a plain stream, out of tokio's IO driver; a TLS stream, which keeps
    /// state beside its socket and does not park, comes back as it was.
    fn of(stream: Stream) -> Result<io::Result<Socket>, Stream> {
        match stream {
            Stream::Plain(tcp) => Ok(tcp
                .into_std()
                .map(|s| Socket::Tcp(mio::net::TcpStream::from_std(s)))),
            Stream::Unix(unix) => Ok(unix
                .into_std()
                .map(|s| Socket::Unix(mio::net::UnixStream::from_std(s)))),
            other => Err(other),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Socket::Tcp(s) => s,
            Socket::Unix(s) => s,
        }
    }

    /// The socket back with tokio.
    fn into_stream(self) -> io::Result<Stream> {
        match self {
            Socket::Tcp(s) => tokio::net::TcpStream::from_std(s.into()).map(Stream::Plain),
            Socket::Unix(s) => tokio::net::UnixStream::from_std(s.into()).map(Stream::Unix),
        }
    }
}

/// Registered with the lot's epoll as the socket it holds.
impl mio::event::Source for Socket {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.source().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.source().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.source().deregister(registry)
    }
}

/// The parked clients, by their epoll token; freed tokens are used again.
#[derive(Default)]
struct Shelf {
    places: Vec<Option<Parked>>,
    free: Vec<usize>,
}

impl Shelf {
    /// The token the next `put` gives.
    fn next_token(&self) -> usize {
        self.free.last().copied().unwrap_or(self.places.len())
    }

    fn put(&mut self, parked: Parked) -> usize {
        match self.free.pop() {
            Some(token) => {
                self.places[token] = Some(parked);
                token
            }
            None => {
                self.places.push(Some(parked));
                self.places.len() - 1
            }
        }
    }

    /// Takes the client off the shelf; its token is used again only once `free`d (its socket
    /// may still stir the epoll under it until deregistered).
    fn take(&mut self, token: usize) -> Option<Parked> {
        self.places.get_mut(token)?.take()
    }

    fn free(&mut self, token: usize) {
        self.free.push(token);
    }

    /// How many clients are parked.
    fn len(&self) -> usize {
        self.places.len() - self.free.len()
    }

    /// The tokens of the parked clients `due` picks.
    fn tokens(&self, due: impl Fn(&Parked) -> bool) -> Vec<usize> {
        let places = self.places.iter().enumerate();
        places
            .filter_map(|(token, p)| p.as_ref().filter(|p| due(p)).map(|_| token))
            .collect()
    }
}

pub struct Lot {
    ctx: Arc<Context>,
    registry: mio::Registry,
    shelf: Mutex<Shelf>,
    /// Woken through a parked client's slot: the lot then looks for the slots that were.
    stir: Arc<Wake>,
    stir_waker: Waker,
    /// The watching task has ended: nothing parks any more.
    closed: std::sync::atomic::AtomicBool,
    /// The fewest clients parked at a tick since memory was last given back.
    parked_low: std::sync::atomic::AtomicUsize,
}

impl Lot {
    /// A lot for `ctx`'s clients, and the epoll it watches (`watch`, on the runtime that
    /// serves them).
    pub fn new(ctx: Arc<Context>) -> std::io::Result<(Arc<Lot>, mio::Poll)> {
        let poll = mio::Poll::new()?;
        let stir = Arc::new(Wake::default());
        let lot = Lot {
            ctx,
            registry: poll.registry().try_clone()?,
            shelf: Mutex::default(),
            stir_waker: Waker::from(stir.clone()),
            stir,
            closed: Default::default(),
            parked_low: Default::default(),
        };
        Ok((Arc::new(lot), poll))
    }

    fn shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lot's task: advances the coarse clock, asks sessions idle long enough to park,
    /// and takes parked clients up when they stir. Without it nothing parks.
    pub async fn watch(self: Arc<Self>, poll: mio::Poll) {
        // SAFETY: the epoll's descriptor is the Poll's own, open until the Poll is dropped,
        // and the AsyncFd owns the Poll.
        let epoll = unsafe { AsyncFd::register_with_interest(poll, Interest::READABLE) };
        let mut epoll = match epoll {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "idle clients will not be parked");
                return;
            }
        };
        let mut events = mio::Events::with_capacity(EVENTS);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = epoll.readable_mut() => {
                    let Ok(mut ready) = ready else { break };
                    if let Err(e) = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(error = %e, "the parking lot's epoll failed");
                        break;
                    }
                    // A full batch may leave more behind: look again before waiting.
                    if events.iter().count() < EVENTS {
                        ready.clear_ready();
                    }
                    for event in events.iter() {
                        self.take_up(event.token().0);
                    }
                }
                _ = tick.tick() => self.sweep(),
                _ = self.stir.notified() => {
                    let tokens = self.shelf().tokens(|p| p.reg.slot.wake.due());
                    tokens.into_iter().for_each(|t| self.take_up(t));
                }
            }
        }
        // Nobody would wake the parked clients any more.
        let tokens = {
            let shelf = self.shelf();
            self.closed.store(true, Ordering::Release);
            shelf.tokens(|_| true)
        };
        tokens.into_iter().for_each(|t| self.take_up(t));
    }

    /// Parks a client whose session gave up its task (`Exit::Park`). Only a plain socket
    /// (TCP or Unix) parks, while the lot is watched; anything else goes on in a new task at once.
    pub(super) fn park(self: &Arc<Self>, client: Client, rest: Box<Resting>) {
        let Client {
            stream,
            reg,
            admitted,
        } = client;
        let socket = match Socket::of(stream) {
            Ok(socket) => socket,
            Err(stream) => {
                let client = Client {
                    stream,
                    reg,
                    admitted,
                };
                tokio::spawn(live(self.clone(), client, rest, BytesMut::new()));
                return;
            }
        };
        let pid = reg.process_id;
        // Parked, it is not asked again (the sweep passes over a slot without a stamp).
        let since = reg.slot.idle_since.swap(0, Ordering::Relaxed);
        let mut socket = match socket {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(pid, error = %e, "client lost while being parked");
                return;
            }
        };
        let slot = reg.slot.clone();
        let token = {
            let mut shelf = self.shelf();
            let token = shelf.next_token();
            let interest = mio::Interest::READABLE;
            // Under the shelf's lock: the watch's end takes up everyone on the shelf.
            let closed = self.closed.load(Ordering::Acquire);
            let registered = match closed {
                true => Ok(()),
                false => self
                    .registry
                    .register(&mut socket, mio::Token(token), interest),
            };
            if closed || registered.is_err() {
                drop(shelf);
                if let Err(e) = registered {
                    tracing::warn!(pid, error = %e, "client could not be parked");
                }
                self.resume(Parked {
                    socket,
                    reg,
                    admitted,
                    rest,
                    since,
                });
                return;
            }
            shelf.put(Parked {
                socket,
                reg,
                admitted,
                rest,
                since,
            })
        };
        self.ctx.metrics.parked.inc();
        self.ctx.metrics.parkings.inc();
        tracing::debug!(pid, token, "parked");
        // A wake from here on stirs the lot; one that came before is seen now.
        if slot.wake.watch(&self.stir_waker) {
            self.take_up(token);
        }
    }

    /// Takes the client parked under `token` up in a new task (nothing if it is gone). The
    /// system calls that moves its socket back to tokio are the new task's, not the lot's:
    /// a crowd stirring at once is taken up by every worker, not one after another here.
    fn take_up(self: &Arc<Self>, token: usize) {
        let Some(mut parked) = self.shelf().take(token) else {
            return;
        };
        self.ctx.metrics.parked.dec();
        tracing::debug!(pid = parked.reg.process_id, token, "taken up");
        if parked.since != 0 {
            // As a session learns it when data ends its wait (`read_idle`): a client that
            // comes back in a rhythm is not parked between its transactions.
            let gap = self
                .ctx
                .tick
                .load(Ordering::Relaxed)
                .wrapping_sub(parked.since);
            learn(&parked.reg.slot, gap);
        }
        let lot = self.clone();
        tokio::spawn(async move {
            let _ = lot.registry.deregister(&mut parked.socket);
            lot.shelf().free(token);
            if let Some((client, rest)) = unpark(parked) {
                live(lot, client, rest, BytesMut::new()).await;
            }
        });
    }

    fn resume(self: &Arc<Self>, parked: Parked) {
        if let Some((client, rest)) = unpark(parked) {
            tokio::spawn(live(self.clone(), client, rest, BytesMut::new()));
        }
    }

    /// Once a tick: the clock moves on; sessions idle long enough are asked to park; parked
    /// clients whose client_idle_timeout has come are taken up to be told.
    fn sweep(self: &Arc<Self>) {
        let now = self.ctx.tick.fetch_add(1, Ordering::Relaxed) + 1;
        if self.ctx.client_count() > super::idle::FEW_CLIENTS {
            self.ctx.cancels.each(|slot| {
                let since = slot.idle_since.load(Ordering::Relaxed);
                if due(now, since, slot.park_after.load(Ordering::Relaxed)) {
                    slot.ask_to_park();
                }
            });
        }
        self.give_back();
        let config = self.ctx.config.load();
        if let Some(timeout) = config.general.client_idle_timeout.enabled() {
            let now = Instant::now();
            let due = |p: &Parked| p.rest.idle_since().is_some_and(|s| s + timeout <= now);
            let tokens = self.shelf().tokens(due);
            tokens.into_iter().for_each(|t| self.take_up(t));
        }
    }

    /// Gives the memory that a crowd of clients freed as they parked back to the system. The
    /// allocator keeps freed memory for reuse, and what thousands of tasks and buffers left
    /// (after a crowd's logins, or a burst of work with large results) would stay in the
    /// process's RSS: about 300 B a client for 2,000 clients after a burst. Done when the
    /// parked count has risen by GIVE_BACK_AFTER since its low, at most once a tick: a crowd
    /// that parks is given back together, and clients that come and go in a steady rhythm do
    /// not make the allocator give back what it needs again at once. Takes 20 to 130 µs with
    /// 2,000 to 10,000 clients.
    fn give_back(&self) {
        let parked = self.shelf().len();
        let (low, now) = give_back_due(self.parked_low.load(Ordering::Relaxed), parked);
        if now {
            trim_heap();
        }
        self.parked_low.store(low, Ordering::Relaxed);
    }
}

/// With `parked` clients parked now and `low` the fewest since memory was last given back:
/// the new low, and whether memory is given back now.
fn give_back_due(low: usize, parked: usize) -> (usize, bool) {
    let low = low.min(parked);
    match parked - low >= GIVE_BACK_AFTER {
        true => (parked, true),
        false => (low, false),
    }
}

/// Returns the allocator's free memory to the system, where the allocator is glibc's.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A parked client's socket back with tokio, and its session; None if the socket is lost.
fn unpark(parked: Parked) -> Option<(Client, Box<Resting>)> {
    let Parked {
        socket,
        reg,
        admitted,
        rest,
        ..
    } = parked;
    match socket.into_stream() {
        Ok(stream) => {
            let client = Client {
                stream,
                reg,
                admitted,
            };
            Some((client, rest))
        }
        Err(e) => {
            let pid = reg.process_id;
            tracing::warn!(pid, error = %e, "parked client lost: its socket could not be taken up");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::clients::Peer;

    #[test]
    fn a_quick_rhythm_waits_longer_before_parking() {
        // Came back after up to a second and a half: twice that pause.
        assert_eq!(rhythm(3), 6);
        assert_eq!(rhythm(RHYTHM_TICKS / 2), RHYTHM_TICKS);
        // A longer pause says nothing about the next: parked as soon as any client.
        assert_eq!(rhythm(RHYTHM_TICKS / 2 + 1), PARK_AFTER_TICKS);
        assert_eq!(rhythm(u32::MAX), PARK_AFTER_TICKS);
    }

    #[test]
    fn a_client_fresh_from_its_login_is_parked_at_the_first_tick() {
        let cancels = crate::context::clients::Cancels::new(1);
        let reg = cancels.register(Peer::Tcp("127.0.0.1:5432".parse().unwrap()));
        let slot = &reg.slot;
        assert_eq!(slot.park_after.load(Ordering::Relaxed), FRESH);
        // Idle since tick 10: fresh, asked at tick 11; not while it is not idle.
        assert!(!due(10, 10, FRESH));
        assert!(due(11, 10, FRESH));
        assert!(!due(11, 0, FRESH));
        // Once it has sent something, even at once, it waits the usual two ticks.
        learn(slot, 0);
        let wait = slot.park_after.load(Ordering::Relaxed);
        assert_eq!(wait, PARK_AFTER_TICKS);
        assert!(!due(11, 10, wait));
        assert!(due(12, 10, wait));
        // A rhythm learnt is kept when data comes at once (taken up from the lot).
        learn(slot, 3);
        learn(slot, 0);
        assert_eq!(slot.park_after.load(Ordering::Relaxed), 6);
        // The clock wraps.
        assert!(due(2, u32::MAX - 1, PARK_AFTER_TICKS));
    }

    #[test]
    fn memory_is_given_back_once_a_crowd_has_parked_not_while_clients_come_and_go() {
        let run = |counts: &[usize]| {
            let mut low = 0;
            let mut given = vec![];
            for &parked in counts {
                let (next, now) = give_back_due(low, parked);
                low = next;
                given.push(now);
            }
            given
        };
        // A crowd logging in parks over a few ticks: given back as it does, then not again.
        let crowd = run(&[0, 40, 1200, 2000, 2000, 2000]);
        assert_eq!(crowd, [false, false, true, true, false, false]);
        // Clients coming and going around the same count: never.
        let steady = [1000, 1030, 980, 1010, 970, 1025, 990];
        assert!(run(&[0, 1000]).ends_with(&[true]));
        let mut counts = vec![0, 1000];
        counts.extend(steady);
        assert!(!run(&counts)[2..].contains(&true));
        // A burst takes them all up; once they park again, given back.
        let burst = run(&[2000, 2000, 0, 0, 1990, 2000]);
        assert_eq!(burst[2..], [false, false, true, false]);
    }
}
