//! SHOW STATS, SHOW STATS_TOTALS, SHOW STATS_AVERAGES: per database, totals since start and
//! per-second averages over the last stats_period, times in microseconds (PgBouncer's
//! columns and units).

use super::{Cell, Kind, Table};
use crate::context::Context;
use crate::metrics::report::Totals;

pub enum Which {
    Both,
    Totals,
    Averages,
}

fn us(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

/// Per-second rates and per-item averages between two samples.
struct Averages {
    xacts: f64,
    queries: f64,
    received: f64,
    sent: f64,
    xact_time: i64,
    query_time: i64,
    wait_time: i64,
}

fn averages(now: &Totals, then: &Totals, seconds: f64) -> Averages {
    let per = |a: f64, b: f64| {
        if seconds > 0.0 {
            (a - b) / seconds
        } else {
            0.0
        }
    };
    let each = |time: f64, n: f64| if n > 0.0 { us(time / n) } else { 0 };
    let xacts = now.xacts.saturating_sub(then.xacts) as f64;
    let queries = now.queries.saturating_sub(then.queries) as f64;
    Averages {
        xacts: per(now.xacts as f64, then.xacts as f64),
        queries: per(now.queries as f64, then.queries as f64),
        received: per(now.received as f64, then.received as f64),
        sent: per(now.sent as f64, then.sent as f64),
        xact_time: each(now.xact_seconds - then.xact_seconds, xacts),
        query_time: each(now.query_seconds - then.query_seconds, queries),
        wait_time: us(per(now.wait_seconds, then.wait_seconds)),
    }
}

pub fn table(ctx: &Context, which: Which) -> Table {
    use Kind::*;
    let totals = crate::metrics::report::totals(&ctx.pools);
    let window = ctx.stats_window();
    let empty = Totals::default();
    let avg = |db: &str| match &window {
        Some((seconds, before, after)) => averages(
            after.get(db).unwrap_or(&empty),
            before.get(db).unwrap_or(&empty),
            *seconds,
        ),
        None => averages(&empty, &empty, 0.0),
    };
    let config = ctx.config.load();
    let mut names: Vec<String> = ctx
        .clusters
        .served(&config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.extend(totals.keys().cloned());
    names.sort();
    names.dedup();
    let columns: &[(&'static str, Kind)] = match which {
        Which::Both => &[
            ("database", Text),
            ("total_xact_count", Int),
            ("total_query_count", Int),
            ("total_received", Int),
            ("total_sent", Int),
            ("total_xact_time", Int),
            ("total_query_time", Int),
            ("total_wait_time", Int),
            ("avg_xact_count", Int),
            ("avg_query_count", Int),
            ("avg_recv", Int),
            ("avg_sent", Int),
            ("avg_xact_time", Int),
            ("avg_query_time", Int),
            ("avg_wait_time", Int),
        ],
        Which::Totals | Which::Averages => &[
            ("database", Text),
            ("xact_count", Int),
            ("query_count", Int),
            ("bytes_received", Int),
            ("bytes_sent", Int),
            ("xact_time", Int),
            ("query_time", Int),
            ("wait_time", Int),
        ],
    };
    let mut t = Table::new(columns);
    for db in &names {
        let tot = totals.get(db).unwrap_or(&empty);
        let a = avg(db);
        let total_cells = vec![
            Cell::from(tot.xacts),
            Cell::from(tot.queries),
            Cell::from(tot.received),
            Cell::from(tot.sent),
            Cell::from(us(tot.xact_seconds)),
            Cell::from(us(tot.query_seconds)),
            Cell::from(us(tot.wait_seconds)),
        ];
        let avg_cells = vec![
            Cell::from(a.xacts.round() as i64),
            Cell::from(a.queries.round() as i64),
            Cell::from(a.received.round() as i64),
            Cell::from(a.sent.round() as i64),
            Cell::from(a.xact_time),
            Cell::from(a.query_time),
            Cell::from(a.wait_time),
        ];
        let mut row = vec![Cell::from(db)];
        match which {
            Which::Both => {
                row.extend(total_cells);
                row.extend(avg_cells);
            }
            Which::Totals => row.extend(total_cells),
            Which::Averages => row.extend(avg_cells),
        }
        t.row(row);
    }
    t
}
