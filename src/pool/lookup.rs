//! Secrets of users the configuration does not list, found with auth_query (PgBouncer's
//! auth_user): run as auth_user on the primary of the auth database, kept for auth_cache_ttl.
//!
//! A login whose password fails against a kept secret asks again (`Fresh::Yes`), so a rotated
//! password works at once; but a user's secret is asked for again at most once a second (after
//! a burst of three), so a flood of wrong passwords costs the server a lookup a second, not one
//! an attempt. Lookups for one (auth database, auth_user) take turns on one connection, kept
//! for the next, and a lookup that waited for its turn takes what the one before it found for
//! the same user: a burst of logins costs one server login and one query a user, never a
//! connection each.

use crate::auth::Secret;
use crate::cluster::Clusters;
use crate::config::Config;
use crate::server::query::{self, QueryError};
use crate::server::ServerConn;
use crate::server::{Credentials, LoginError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most kept secrets; past it the expired ones go, and if that is not enough, all of them.
const MAX_KEPT: usize = 10_000;

/// How often a user's secret may be asked for again (`Fresh::Yes`): a burst of this many at
/// once, then one a second. A rotated password is seen at once, and wrong passwords, however
/// many, cost the server at most a query a second.
const REFRESH_BURST: f64 = 3.0;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("auth_dbname names no database pgsluice serves")]
    NoDatabase,
    #[error("auth_user {user} cannot log in: {why}")]
    Login { user: String, why: LoginError },
    #[error("auth_query failed: {0}")]
    Query(#[from] QueryError),
    #[error("auth_query did not answer within server_connect_timeout")]
    Timeout,
}

/// Whether a kept secret will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// A kept secret younger than auth_cache_ttl will do.
    No,
    /// Ask the server: the kept one just failed.
    Yes,
}

/// What a lookup found: the secret (None: no such role, no password, or expired), and whether
/// it was kept from an earlier lookup.
#[derive(Debug, Clone)]
pub struct Found {
    pub secret: Option<Secret>,
    pub kept: bool,
}

struct Kept {
    secret: Option<Secret>,
    at: Instant,
    /// Asks again that may be made now (`REFRESH_BURST` at most), as of `at`; one more each
    /// second.
    refreshes: f64,
}

impl Kept {
    fn refreshes(&self) -> f64 {
        (self.refreshes + self.at.elapsed().as_secs_f64()).min(REFRESH_BURST)
    }

    /// Whether this will do for a lookup of `fresh` that began at `asked`: anything found
    /// since then does, else what `fresh` allows.
    fn serves(&self, fresh: Fresh, asked: Instant, ttl: Duration) -> bool {
        self.at >= asked
            || match fresh {
                Fresh::No => self.at.elapsed() < ttl,
                Fresh::Yes => self.refreshes() < 1.0,
            }
    }
}

type Key = (String, String);

/// The turn of one (auth database, auth_user), holding its connection while it is idle.
type Turn = Arc<tokio::sync::Mutex<Option<Box<ServerConn>>>>;

#[derive(Default)]
pub struct Lookups {
    /// By (auth database, user).
    kept: Mutex<HashMap<Key, Kept>>,
    /// By (auth database, auth_user).
    turns: Mutex<HashMap<Key, Turn>>,
}

impl Lookups {
    /// The secret of `user` for a client of `database`; None when no auth_user applies there.
    pub async fn secret(
        &self,
        config: &Config,
        clusters: &Clusters,
        database: &str,
        user: &str,
        fresh: Fresh,
    ) -> Option<Result<Found, LookupError>> {
        let how = config.auth_lookup(database)?;
        let key = (how.database.to_owned(), user.to_owned());
        let ttl = config.general.auth_cache_ttl.0;
        let asked = Instant::now();
        let kept = || {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let k = kept.get(&key).filter(|k| k.serves(fresh, asked, ttl))?;
            Some(Found {
                secret: k.secret.clone(),
                kept: true,
            })
        };
        if let Some(found) = kept() {
            return Some(Ok(found));
        }
        let bound = config
            .general
            .server_connect_timeout
            .0
            .max(Duration::from_secs(1));
        let turn = self.turn((how.database.to_owned(), how.user.to_owned()));
        let asking = async {
            let mut conn = turn.lock().await;
            // Whoever had the turn before may have asked for this user.
            if let Some(found) = kept() {
                return Ok(found);
            }
            let secret = self.ask(&mut conn, config, clusters, how, user).await?;
            self.keep(key.clone(), secret.clone(), fresh, ttl);
            Ok(Found {
                secret,
                kept: false,
            })
        };
        Some(match tokio::time::timeout(bound, asking).await {
            Ok(found) => found,
            Err(_) => Err(LookupError::Timeout),
        })
    }

    fn turn(&self, key: Key) -> Turn {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.entry(key).or_default().clone()
    }

    fn keep(&self, key: Key, secret: Option<Secret>, fresh: Fresh, ttl: Duration) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.retain(|_, k| k.at.elapsed() < ttl);
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        let refreshes = kept.get(&key).map_or(REFRESH_BURST, Kept::refreshes);
        let entry = Kept {
            secret,
            at: Instant::now(),
            refreshes: match fresh {
                Fresh::No => refreshes,
                Fresh::Yes => refreshes - 1.0,
            },
        };
        kept.insert(key, entry);
    }

    /// Runs auth_query for `user` on the turn's connection (opened if there is none); the
    /// connection stays for the next lookup unless it failed.
    async fn ask(
        &self,
        idle: &mut Option<Box<ServerConn>>,
        config: &Config,
        clusters: &Clusters,
        how: crate::config::AuthLookup<'_>,
        user: &str,
    ) -> Result<Option<Secret>, LookupError> {
        let reused = idle.is_some();
        let mut conn = match idle.take() {
            Some(c) => c,
            None => self.open(config, clusters, how).await?,
        };
        let mut rows = query::with_param(&mut conn, how.query, user).await;
        if reused && matches!(rows, Err(QueryError::Io(_) | QueryError::Protocol)) {
            // The kept connection went away while idle: once more on a new one.
            conn = self.open(config, clusters, how).await?;
            rows = query::with_param(&mut conn, how.query, user).await;
        }
        let rows = match rows {
            Ok(rows) => rows,
            // The server's own error leaves the connection ready for the next lookup.
            Err(e @ QueryError::Server { .. }) => {
                *idle = Some(conn);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        *idle = Some(conn);
        // PgBouncer's shape: (name, secret); a NULL secret is a role that may not log in.
        let secret = rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().nth(1).flatten())
            .and_then(|text| Secret::parse(&text).ok());
        Ok(secret)
    }

    /// A new connection for lookups, as auth_user (its password from the configuration).
    async fn open(
        &self,
        config: &Config,
        clusters: &Clusters,
        how: crate::config::AuthLookup<'_>,
    ) -> Result<Box<ServerConn>, LookupError> {
        let cluster = clusters
            .get_or_add(config, how.database)
            .ok_or(LookupError::NoDatabase)?;
        let credentials = Credentials {
            user: how.user.to_owned(),
            secret: config.user_secret(how.user),
        };
        let target = cluster.target(cluster.primary(), &credentials, &config.general);
        let timeout = config.general.server_connect_timeout.0;
        ServerConn::connect(&target, timeout)
            .await
            .map_err(|why| LookupError::Login {
                user: how.user.to_owned(),
                why,
            })
    }

    /// Forgets every kept secret and connection: a reload may have changed who looks up what.
    pub fn clear(&self) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.turns.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
