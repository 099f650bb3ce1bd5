//! The routing policy's decisions, against clusters built from configuration text.

use super::*;
use crate::cluster::BanTimes;
use crate::config::Config;
use std::time::Duration;

/// A ban that outlasts the test.
const LONG_BAN: BanTimes = BanTimes {
    first: Duration::from_secs(60),
    longest: Duration::from_secs(60),
};

fn cluster(extra: &str) -> Cluster {
    let text = format!(
        "[databases.app]\nport = 5433\nreplicas = [\"127.0.0.1:5434\", \"127.0.0.1:5435\"]\n{extra}"
    );
    Cluster::new(&Config::parse(&text, "t").unwrap(), "app").unwrap()
}

fn work(sql: &str) -> Work {
    let (class, hint) = crate::router::classify::analyze(sql, &Default::default());
    Work {
        class,
        hint,
        complete: true,
    }
}

const TX: Session = Session {
    pool_mode: PoolMode::Transaction,
    route: RouteMode::Auto,
    avoid: None,
    retries: 0,
    wrote: false,
    floor: Lsn(0),
    waited: false,
};

/// Decides with counters of its own.
fn decide(c: &Cluster, w: &Work, s: &Session) -> Result<Decision, Unplaced> {
    super::decide(c, &RouteCounters::default(), s, || *w)
}

fn node(c: &Cluster, sql: &str, s: &Session) -> usize {
    decide(c, &work(sql), s).unwrap().node
}

#[test]
fn reads_rotate_over_replicas_and_writes_go_to_the_primary() {
    let c = cluster("");
    let counters = RouteCounters::default();
    let node = |c: &Cluster, sql: &str, s: &Session| {
        super::decide(c, &counters, s, || work(sql)).unwrap().node
    };
    let mut seen = [0; 3];
    for _ in 0..10 {
        seen[node(&c, "SELECT 1", &TX)] += 1;
    }
    assert_eq!(seen, [0, 5, 5]);
    for sql in [
        "INSERT INTO t VALUES (1)",
        "SELECT * FROM t FOR UPDATE",
        "SELECT nextval('s')",
        "BEGIN",
        "SET search_path = x",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
    ] {
        assert_eq!(node(&c, sql, &TX), 0, "{sql}");
    }
    assert_ne!(node(&c, "BEGIN READ ONLY", &TX), 0);
    assert_eq!(
        counters.get(RouteReason::Read),
        11,
        "ten reads and a read-only transaction"
    );
    assert_eq!(counters.get(RouteReason::Locking), 1);
    assert_eq!(counters.get(RouteReason::InTransaction), 2);
}

#[test]
fn retryable_only_for_complete_reads_in_transaction_mode() {
    let c = cluster("");
    let flow = |w: &Work| decide(&c, w, &TX).unwrap().flow;
    assert_eq!(flow(&work("SELECT 1")), Flow::Retryable);
    assert_eq!(flow(&work("BEGIN READ ONLY")), Flow::OneUnit);
    assert_eq!(flow(&work("INSERT INTO t VALUES (1)")), Flow::Stream);
    let partial = Work {
        complete: false,
        ..work("SELECT 1")
    };
    assert_eq!(decide(&c, &partial, &TX).unwrap().node, 0);
    let retried_everywhere = Session { retries: 3, ..TX };
    assert_eq!(
        decide(&c, &work("SELECT 1"), &retried_everywhere)
            .unwrap()
            .flow,
        Flow::OneUnit,
        "no retry budget left"
    );
}

#[test]
fn a_database_without_replicas_never_looks_at_the_work() {
    let text = "[databases.app]\nport = 5433\n";
    let c = Cluster::new(&Config::parse(text, "t").unwrap(), "app").unwrap();
    let counters = RouteCounters::default();
    let d = super::decide(&c, &counters, &TX, || unreachable!("no choice to make"));
    assert_eq!(d.unwrap().reason, RouteReason::NoReplicas);
    assert_eq!(counters.get(RouteReason::NoReplicas), 1);
    let hinted = Session {
        route: RouteMode::Replica,
        ..TX
    };
    let d = super::decide(&c, &counters, &hinted, || work("SELECT 1")).unwrap();
    assert_eq!((d.node, d.reason), (0, RouteReason::Read));
}

#[test]
fn retries_go_elsewhere_once_per_node_and_ban_only_replicas() {
    let c = cluster("");
    let counters = RouteCounters::default();
    let lost = retry(&c, &counters, &TX, 1, Failure::Lost).unwrap();
    assert!(lost.ban);
    let on_primary = retry(&c, &counters, &TX, 0, Failure::Lost).unwrap();
    assert!(!on_primary.ban, "the primary is the checker's to ban");
    let refused = Failure::Checkout {
        connect: true,
        recovering: false,
        was_primary: false,
    };
    assert!(retry(&c, &counters, &TX, 1, refused).unwrap().ban);
    assert_eq!(retry(&c, &counters, &TX, 0, refused), None);
    // The primary's login failed but its pool tries again soon: the same node, unbanned,
    // however many retries came before.
    let recovering = Failure::Checkout {
        connect: true,
        recovering: true,
        was_primary: true,
    };
    let spent = Session { retries: 3, ..TX };
    let again = retry(&c, &counters, &spent, 0, recovering).unwrap();
    assert!(!again.ban);
    let replica_recovering = Failure::Checkout {
        connect: true,
        recovering: true,
        was_primary: false,
    };
    assert!(
        retry(&c, &counters, &TX, 1, replica_recovering)
            .unwrap()
            .ban,
        "a replica is left"
    );
    let waited = Failure::Checkout {
        connect: false,
        recovering: false,
        was_primary: false,
    };
    assert!(!retry(&c, &counters, &TX, 2, waited).unwrap().ban);
    let spent = Session { retries: 3, ..TX };
    assert_eq!(retry(&c, &counters, &spent, 1, Failure::Lost), None);
    assert_eq!(counters.get(RouteReason::Retry), 6);
    let conflict = retryable_error(sqlstate::SERIALIZATION_FAILURE.as_bytes()).unwrap();
    assert!(!conflict.ban);
    assert!(
        retryable_error(sqlstate::ADMIN_SHUTDOWN.as_bytes())
            .unwrap()
            .ban
    );
    assert_eq!(retryable_error(b"42P01"), None);
    let wrote = retryable_error(sqlstate::READ_ONLY_SQL_TRANSACTION.as_bytes()).unwrap();
    assert!(
        wrote.wrote && !wrote.ban,
        "a read that writes goes to the primary"
    );
    let again = Session { wrote: true, ..TX };
    let d = decide(&c, &work("SELECT f()"), &again).unwrap();
    assert_eq!((d.node, d.reason), (0, RouteReason::WriteFunction));
    assert!(may_ban(&c, 1) && !may_ban(&c, 0));
}

#[test]
fn with_auto_roles_the_found_primary_takes_writes_and_a_contest_refuses_them() {
    let c = cluster("role = \"auto\"");
    assert_eq!(
        decide(&c, &work("INSERT INTO t VALUES (1)"), &TX)
            .unwrap()
            .node,
        0
    );
    // Node 1 was promoted (the checks found it alone out of recovery).
    c.set_leader(crate::cluster::Leader::Node(1), 0b010);
    assert_eq!(c.primary(), 1);
    assert_eq!(c.role(1), Role::Primary);
    assert_eq!(c.role(0), Role::Replica);
    let write = decide(&c, &work("INSERT INTO t VALUES (1)"), &TX).unwrap();
    assert_eq!(write.node, 1);
    for _ in 0..6 {
        let read = decide(&c, &work("SELECT 1"), &TX).unwrap();
        assert_ne!(read.node, 1, "reads go to the others");
    }
    assert!(!may_ban(&c, 1) && may_ban(&c, 0));
    // Work that waited for the old primary's login goes to the new one, unbanned, however
    // many tries it spent waiting; the old one's failure is no longer waited for.
    let counters = RouteCounters::default();
    let spent = Session { retries: 3, ..TX };
    for recovering in [true, false] {
        let failed = Failure::Checkout {
            connect: true,
            recovering,
            was_primary: true,
        };
        let moved = retry(&c, &counters, &spent, 0, failed).unwrap();
        assert_eq!((moved.ban, moved.why), (false, "the primary has moved"));
    }
    // Two nodes out of recovery: no write goes anywhere, reads still go to a replica.
    c.set_leader(crate::cluster::Leader::Contested, 0b011);
    let refused = decide(&c, &work("INSERT INTO t VALUES (1)"), &TX);
    assert_eq!(refused.unwrap_err(), Unplaced::Contested);
    assert_eq!(decide(&c, &work("SELECT 1"), &TX).unwrap().node, 2);
}

#[test]
fn hints_and_route_modes_win() {
    let c = cluster("");
    let counters = RouteCounters::default();
    let decide = |c: &Cluster, w: &Work, s: &Session| super::decide(c, &counters, s, || *w);
    let node = |c: &Cluster, sql: &str, s: &Session| decide(c, &work(sql), s).unwrap().node;
    assert_eq!(node(&c, "/* pgsluice: primary */ SELECT 1", &TX), 0);
    assert_ne!(node(&c, "/* pgsluice: replica */ SELECT 1", &TX), 0);
    let primary = Session {
        route: RouteMode::Primary,
        ..TX
    };
    assert_eq!(node(&c, "SELECT 1", &primary), 0);
    assert_ne!(node(&c, "/* pgsluice: replica */ SELECT 1", &primary), 0);
    let session = Session {
        pool_mode: PoolMode::Session,
        ..TX
    };
    assert_eq!(node(&c, "SELECT 1", &session), 0);
    let session_replica = Session {
        route: RouteMode::Replica,
        ..session
    };
    let d = decide(&c, &work("SELECT 1"), &session_replica).unwrap();
    assert_ne!(d.node, 0);
    assert_eq!(d.flow, Flow::OneUnit, "a session's state cannot move");
    assert_eq!(counters.get(RouteReason::Hint), 5);
}

#[test]
fn banned_and_lagging_replicas_get_no_reads() {
    let c = cluster("");
    c.ban(1, LONG_BAN, "test");
    for _ in 0..4 {
        assert_eq!(node(&c, "SELECT 1", &TX), 2);
    }
    let avoid = Session {
        avoid: Some(2),
        ..TX
    };
    let d = decide(&c, &work("SELECT 1"), &avoid).unwrap();
    assert_eq!((d.node, d.reason), (0, RouteReason::ReplicaBanned));
    c.ban(2, LONG_BAN, "test");
    let d = decide(&c, &work("SELECT 1"), &TX).unwrap();
    assert_eq!((d.node, d.reason), (0, RouteReason::ReplicaBanned));

    let never = cluster("read_from_primary = \"never\"\n");
    never.ban(1, LONG_BAN, "test");
    never.ban(2, LONG_BAN, "test");
    assert_eq!(
        decide(&never, &work("SELECT 1"), &TX),
        Err(Unplaced::NoReplica)
    );
    assert_eq!(node(&never, "INSERT INTO t VALUES (1)", &TX), 0);
}

#[test]
fn a_read_waits_once_for_a_replica_at_its_floor_then_takes_the_primary() {
    let c = cluster("");
    let floor = Session {
        floor: Lsn(100),
        ..TX
    };
    assert_eq!(decide(&c, &work("SELECT 1"), &floor), Err(Unplaced::Behind));
    c.set_replayed(2, Lsn(100));
    for _ in 0..4 {
        let d = decide(&c, &work("SELECT 1"), &floor).unwrap();
        assert_eq!((d.node, d.reason, d.writes), (2, RouteReason::Read, false));
    }
    let waited = Session {
        floor: Lsn(101),
        waited: true,
        ..TX
    };
    let d = decide(&c, &work("SELECT 1"), &waited).unwrap();
    assert_eq!((d.node, d.reason), (0, RouteReason::ReadYourWrites));
    assert_eq!(
        d.flow,
        Flow::OneUnit,
        "a read on the primary, placed unit by unit"
    );
    assert!(!d.writes);
    c.ban(1, LONG_BAN, "test");
    c.ban(2, LONG_BAN, "test");
    let d = decide(&c, &work("SELECT 1"), &floor).unwrap();
    assert_eq!(
        d.reason,
        RouteReason::ReplicaBanned,
        "no replica to wait for"
    );

    let never = cluster("read_from_primary = \"never\"\n");
    let d = decide(&never, &work("SELECT 1"), &waited).unwrap();
    assert_ne!(d.node, 0, "a replica behind beats no read at all");
}

#[test]
fn only_work_that_may_write_on_the_primary_moves_the_floor() {
    let c = cluster("");
    let writes = |sql: &str, s: &Session| decide(&c, &work(sql), s).unwrap().writes;
    assert!(writes("INSERT INTO t VALUES (1)", &TX));
    assert!(writes("BEGIN", &TX));
    assert!(writes("SELECT nextval('s')", &TX));
    assert!(!writes("SELECT 1", &TX));
    assert!(!writes("/* pgsluice: primary */ SELECT 1", &TX));
    assert!(writes("/* pgsluice: primary */ UPDATE t SET x = 1", &TX));
    let text = "[databases.app]\nport = 5433\n";
    let alone = Cluster::new(&Config::parse(text, "t").unwrap(), "app").unwrap();
    let d = decide(&alone, &work("INSERT INTO t VALUES (1)"), &TX).unwrap();
    assert!(!d.writes, "no replica to read from: nothing to learn");
}

#[test]
fn the_primary_can_be_a_member_and_weights_count() {
    let c = cluster("read_from_primary = \"always\"\n");
    let mut seen = [0; 3];
    for _ in 0..30 {
        seen[node(&c, "SELECT 1", &TX)] += 1;
    }
    assert_eq!(seen, [10, 10, 10]);
    let text = "[databases.app]\nport = 5433\nload_balance = \"random\"\n\
                replicas = [{ host = \"127.0.0.1\", port = 5434, weight = 3 }, \"127.0.0.1:5435\"]\n";
    let c = Cluster::new(&Config::parse(text, "t").unwrap(), "app").unwrap();
    let mut seen = [0; 3];
    for _ in 0..4000 {
        seen[node(&c, "SELECT 1", &TX)] += 1;
    }
    assert_eq!(seen[0], 0);
    assert!(seen[1] > 2 * seen[2], "{seen:?}");
}

#[test]
fn least_outstanding_prefers_the_idle_replica() {
    let c = std::sync::Arc::new(cluster("load_balance = \"least_outstanding\"\n"));
    let _busy = (c.link(1), c.link(1));
    for _ in 0..4 {
        assert_eq!(node(&c, "SELECT 1", &TX), 2);
    }
}
