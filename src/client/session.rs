//! The session state machine: a client between login and logout.
//!
//! Idle (`Session::idle_step`), it holds no server (`idle.rs` waits for the client's next
//! message). The first message that needs one starts `Session::work`: it links the client to a
//! server (`link.rs`): the router places the work, the pool hands out a server, and the server
//! is brought to this client's parameters. Linked, bytes flow both ways (`forward.rs`) until
//! the link ends: released once the server owes nothing and is idle (transaction mode), run
//! again elsewhere after a failure the router allows to be retried, or ended with the
//! session. A client that leaves while linked never passes its state on: the server is
//! cleaned up (`server::reset`) or closed.

use super::end::End;
use super::forward::Unlink;
use super::inbox::Inbox;
use super::link::{Link, SequenceValues};
use super::login::LoggedIn;
use super::params::SessionParams;
use super::parked::Lot;
use super::rewrite::ClientStatements;
use crate::cluster::{BanTimes, Lsn};
use crate::config::{Config, PoolMode};
use crate::context::clients::Registration;
use crate::context::{Admitted, Context, Phase};
use crate::pool::{InState, Members};
use crate::router::effects::{Feature, Features};
use crate::router::policy::{self, RouteMode};
use crate::router::{Catalog, RouteCounters};
use crate::server::exchange::Exchange;
use crate::server::tracker::Tracker;
use crate::stream::Stream;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Instant;

/// What an idle client's next message asks for.
pub(super) enum Next {
    /// Nothing yet, or it was answered without a server.
    Stay,
    /// Work for a server.
    Link,
    /// Asked to park, and nothing stands in the way.
    Park,
}

/// The buffers of the last link, kept for the next one: a tracker, the server-bound bytes,
/// and the replay buffer.
#[derive(Default)]
pub(super) struct Spare {
    pub tracker: Tracker,
    pub to_server: BytesMut,
    pub replay: BytesMut,
}

pub(super) struct Session<'a> {
    /// The configuration as of this client's current transaction: taken afresh at each
    /// one, so a reload reaches connected clients too.
    pub config: Arc<Config>,
    pub ctx: &'a Context,
    pub members: Arc<Members>,
    pub routes: Arc<RouteCounters>,
    /// The database's functions and statements that write.
    pub catalog: Arc<Catalog>,
    pub mode: PoolMode,
    /// `SET pgsluice.route` or the startup option.
    pub route: RouteMode,
    /// The node the current work just failed on, and how many times it has been placed again.
    pub avoid: Option<usize>,
    pub retries: usize,
    /// The current unit turned out to write: it runs on the primary.
    pub wrote: bool,
    /// The WAL position this client's reads must see: its writes' (read_your_writes) and
    /// what it asked for (`SET pgsluice.min_lsn`).
    pub floor: Lsn,
    /// Since when the current read has waited for a replica to reach the floor, and whether
    /// that wait is over.
    pub waiting: Option<Instant>,
    pub waited: bool,
    /// Another client's commit position was still being learnt when the wait ran out.
    pub unknown_floor: bool,
    pub client: &'a mut Stream,
    pub inbox: Inbox,
    pub to_client: BytesMut,
    pub params: SessionParams,
    pub reg: &'a Registration,
    pub statements: ClientStatements,
    /// Boxed, and none while idle among many clients: most of the time it is not needed.
    pub spare: Option<Box<Spare>>,
    /// The session-only features that keep this client on its server (transaction mode).
    pub pinned: Features,
    /// The features it has been warned of in the log, once each.
    pub warned: Features,
    /// Its notifications from the shared LISTEN connection, once it listens.
    pub notes: Option<Box<super::listen::Notes>>,
    /// Since when the client has waited idle (its client_idle_timeout runs from here, also
    /// across a parking).
    pub idle_since: Option<Instant>,
    /// The stamp (`ServerConn::stamp`) of the primary's server this client last used in
    /// transaction mode, which holds its session's sequence values; 0 when unknown.
    pub sequence_home: u64,
    connected: InState,
}

/// A logged-in client's connection, and what it holds beyond its session: its socket, its
/// cancel key's registration, its place under max_client_conn. Owned, so that it can be
/// parked (`parked.rs`) and taken up again by another task.
pub struct Client {
    pub stream: Stream,
    pub reg: Registration,
    pub admitted: Admitted,
}

/// What a session keeps while it is parked: what the client has set and prepared, and where
/// it is placed. Everything else of a `Session` is made afresh when it is taken up again.
pub(super) struct Resting {
    config: Arc<Config>,
    members: Arc<Members>,
    routes: Arc<RouteCounters>,
    catalog: Arc<Catalog>,
    mode: PoolMode,
    route: RouteMode,
    floor: Lsn,
    params: SessionParams,
    statements: ClientStatements,
    warned: Features,
    idle_since: Option<Instant>,
    sequence_home: u64,
    /// Counts the client as connected for as long as it lives, parked or not.
    _connected: InState,
}

impl Resting {
    /// A new session's state, and the bytes the client sent after its login.
    pub(super) fn new(ctx: &Context, config: Arc<Config>, login: LoggedIn) -> (Resting, BytesMut) {
        let rest = Resting {
            config,
            routes: ctx.routes.of(&login.database),
            catalog: ctx.catalogs.of(&login.database),
            mode: login.members.primary().setup().settings.pool_mode,
            _connected: login.connected,
            members: login.members,
            route: login.route,
            floor: login.floor,
            params: SessionParams::new(login.params),
            statements: ClientStatements::new(super::rewrite::scope(&login.database, &login.user)),
            warned: Features::NONE,
            idle_since: None,
            sequence_home: 0,
        };
        (rest, login.buf)
    }

    /// Since when the client has waited idle.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        self.idle_since
    }
}

/// Why `Session::serve` returned.
enum Exit {
    End(End),
    /// Idle long enough, with nothing buffered: the client waits parked, without a task.
    Park,
}

/// A logged-in client's task, from its login until it leaves or is parked.
pub fn run(
    lot: Arc<Lot>,
    client: Client,
    config: Arc<Config>,
    login: LoggedIn,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (rest, buf) = Resting::new(client.admitted.ctx(), config, login);
    live(lot, client, Box::new(rest), buf)
}

/// Serves a client from `rest` (and the bytes it sent already) until it leaves, or parks
/// it. Not an `async fn`: the arguments of one are kept twice in its future, and an idle
/// client's memory is mostly its future.
#[allow(clippy::manual_async_fn)]
pub(super) fn live(
    lot: Arc<Lot>,
    mut client: Client,
    rest: Box<Resting>,
    buf: BytesMut,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        match serve(&mut client, rest, buf).await {
            Ok(rest) => lot.park(client, rest),
            Err(end) => {
                let (slot, pid) = (&client.reg.slot, client.reg.process_id);
                tracing::info!(peer = %slot.peer, pid, side = end.side().name(), reason = %end, "client logout");
            }
        }
    }
}

/// Runs the session until the client leaves (why, as `Err`), or until it may be parked
/// (`Ok`, what it keeps). The resting state is a box, freed once the session has taken it.
pub(super) async fn serve(
    client: &mut Client,
    rest: Box<Resting>,
    buf: BytesMut,
) -> Result<Box<Resting>, End> {
    let ctx = client.admitted.ctx();
    let mut s = Session::resume(ctx, &mut client.stream, &client.reg, *rest, buf);
    match s.serve().await {
        Exit::Park => Ok(Box::new(s.rest())),
        Exit::End(end) => {
            s.unlisten_all();
            if !s.pinned.is_empty() {
                s.members.pins.pinned.dec();
            }
            Err(end)
        }
    }
}

impl<'a> Session<'a> {
    fn resume(
        ctx: &'a Context,
        client: &'a mut Stream,
        reg: &'a Registration,
        rest: Resting,
        buf: BytesMut,
    ) -> Session<'a> {
        Session {
            config: rest.config,
            ctx,
            routes: rest.routes,
            catalog: rest.catalog,
            mode: rest.mode,
            members: rest.members,
            route: rest.route,
            avoid: None,
            retries: 0,
            wrote: false,
            floor: rest.floor,
            waiting: None,
            waited: false,
            unknown_floor: false,
            client,
            inbox: Inbox::new(buf),
            to_client: BytesMut::new(),
            params: rest.params,
            reg,
            statements: rest.statements,
            spare: None,
            pinned: Features::NONE,
            warned: rest.warned,
            notes: None,
            idle_since: rest.idle_since,
            sequence_home: rest.sequence_home,
            connected: rest._connected,
        }
    }

    /// What is kept while parked (`may_rest` said the rest can go).
    fn rest(self) -> Resting {
        Resting {
            config: self.config,
            members: self.members,
            routes: self.routes,
            catalog: self.catalog,
            mode: self.mode,
            route: self.route,
            floor: self.floor,
            params: self.params,
            statements: self.statements,
            warned: self.warned,
            // Parked, its client_idle_timeout is kept by the lot, which needs the start.
            idle_since: self.idle_since.or_else(|| Some(Instant::now())),
            sequence_home: self.sequence_home,
            _connected: self.connected,
        }
    }
}

impl Session<'_> {
    /// The state machine: idle, then linked for a unit of work (`work`), then idle again,
    /// until the client leaves or is parked.
    async fn serve(&mut self) -> Exit {
        loop {
            match self.idle_step().await {
                Ok(Next::Stay) => {}
                Ok(Next::Park) => return Exit::Park,
                // Boxed, one allocation per unit of work for linking and forwarding both: they
                // are brief, and an idle client should not carry their size.
                Ok(Next::Link) => {
                    if let Some(end) = Box::pin(self.work()).await {
                        return Exit::End(end);
                    }
                }
                // Boxed: once per session, and an idle client should not carry its size.
                Err(end) => return Exit::End(Box::pin(self.tell(end)).await),
            }
        }
    }

    /// Links the client to a server for its next work and forwards until the link ends:
    /// None when the client is idle again, or how the session ended.
    async fn work(&mut self) -> Option<End> {
        let mut link = match self.link().await {
            Ok(Some(link)) => link,
            Ok(None) => return None,
            Err(end) => return Some(self.tell(end).await),
        };
        let how = self.pump(&mut link).await;
        self.reg.slot.set(None);
        match how {
            Unlink::Release => self.release(*link),
            Unlink::Retry(retry) => self.retry_elsewhere(*link, retry),
            Unlink::End(end) => return Some(Box::pin(self.leave(link, end)).await),
        }
        None
    }

    /// Transaction mode, between transactions: the server goes back to the pool, its
    /// buffers stay for the next link.
    fn release(&mut self, link: Link) {
        let Link {
            ex:
                Exchange {
                    conn,
                    mut tracker,
                    to_server,
                    ..
                },
            node,
            mut replay,
            answered,
            sequences,
            ..
        } = link;
        let now = answered.unwrap_or_else(Instant::now);
        if node == self.members.cluster.primary() && sequences == SequenceValues::Own {
            // Its values are the client's: they stay so while no one else has the server.
            self.sequence_home = conn.stamp;
        }
        let reusable = !conn.ending;
        self.members.pools[node].release_at(conn, reusable, now);
        tracker.reset();
        replay.clear();
        let spare = Spare {
            tracker,
            to_server,
            replay,
        };
        let keep = self.keeps_buffers();
        match self.spare.as_deref_mut() {
            Some(s) => *s = spare,
            None if keep => self.spare = Some(Box::new(spare)),
            None => {}
        }
        self.avoid = None;
        self.retries = 0;
        self.wrote = false;
        self.waiting = None;
        self.waited = false;
        self.unknown_floor = false;
    }

    /// The session ends while linked: tell the client why, then make the server safe for
    /// someone else, or close it.
    async fn leave(&mut self, mut link: Box<Link>, end: End) -> End {
        let end = self.tell(end).await;
        if let End::QueryTimeout | End::TransactionTimeout = end {
            // The server may not answer at all (that is what these limits are for): it is
            // closed, and asked to stop its work from the side.
            let key = link.ex.conn.cancel_key.clone();
            tokio::spawn(async move {
                let _ = crate::server::cancel(&key).await;
            });
            self.members.pools[link.node].release(link.ex.conn, false);
            return end;
        }
        if let End::ServerGone = end {
            let node = link.node;
            self.members.pools[node].release(link.ex.conn, false);
            if policy::may_ban(&self.members.cluster, node) {
                self.ban(node, "server connection lost");
            }
            return end;
        }
        // A pinned client's server holds what pinned it (locks, temporary tables, …), and one
        // whose last statements may have changed the session was never asked what they did
        // (a SET, a PREPARE still running when the client went): the reset query clears it,
        // or the server is closed.
        let reset_query = self.config.general.server_reset_query.as_str();
        let pinned = !self.pinned.is_empty();
        let unasked = !link.touched.is_empty();
        let reset = (self.mode == PoolMode::Session || pinned || unasked)
            .then_some(reset_query)
            .filter(|q| !q.is_empty());
        let loaded = self
            .pinned
            .union(link.touched.start)
            .contains(Feature::Load);
        if self.members.pools[link.node].serves_once() {
            self.members.pools[link.node].release(link.ex.conn, true);
            return end;
        }
        if (pinned || unasked) && (reset.is_none() || loaded) {
            self.members.pools[link.node].release(link.ex.conn, false);
            return end;
        }
        let reusable = crate::server::reset::clean_up(&mut link.ex, reset).await;
        self.members.pools[link.node].release(link.ex.conn, reusable);
        end
    }

    /// Sends the client the FATAL error `end` calls for, if any, and closes its connection.
    async fn tell(&mut self, end: End) -> End {
        if let Some((code, message)) = end.to_client() {
            self.client.fatal(&self.to_client, code, &message).await;
            self.to_client.clear();
        }
        end
    }

    /// The process is shutting down, or an admin asked this client to go.
    pub(super) fn must_go(&self) -> bool {
        self.ctx.phase() >= Phase::Draining
            || self
                .reg
                .slot
                .killed
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps reads away from a node that failed, and closes this pool's idle connections
    /// to it (the health checker does the same for other users' pools).
    pub(super) fn ban(&self, node: usize, why: &str) {
        let cluster = &self.members.cluster;
        if cluster.ban(node, BanTimes::of(&self.config.general), why) {
            self.members.pools[node].drain_idle("node banned");
        }
    }

    /// What the router knows of this client.
    pub(super) fn facts(&self) -> policy::Session {
        policy::Session {
            pool_mode: self.mode,
            route: self.route,
            avoid: self.avoid,
            retries: self.retries,
            wrote: self.wrote,
            floor: self.floor(),
            waited: self.waited,
        }
    }
}
