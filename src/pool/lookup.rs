//! Secrets of users the configuration does not list, found with auth_query (PgBouncer's
//! auth_user): run as auth_user on the primary of the auth database, kept for auth_cache_ttl.
//!
//! A login whose password fails against a kept secret asks again (`Fresh::Yes`), so a rotated
//! password works at once. The connection of a lookup is kept for the next one, so a burst of
//! new users costs one server login.

use crate::auth::Secret;
use crate::cluster::Clusters;
use crate::config::Config;
use crate::server::query::{self, QueryError};
use crate::server::ServerConn;
use crate::server::{Credentials, LoginError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most kept secrets; past it the expired ones go, and if that is not enough, all of them.
const MAX_KEPT: usize = 10_000;

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
}

type Key = (String, String);

#[derive(Default)]
pub struct Lookups {
    /// By (auth database, user).
    kept: Mutex<HashMap<Key, Kept>>,
    /// An idle connection by (auth database, auth_user).
    idle: Mutex<HashMap<Key, Box<ServerConn>>>,
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
        if fresh == Fresh::No {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = kept.get(&key).filter(|k| k.at.elapsed() < ttl) {
                return Some(Ok(Found {
                    secret: k.secret.clone(),
                    kept: true,
                }));
            }
        }
        let bound = config
            .general
            .server_connect_timeout
            .0
            .max(Duration::from_secs(1));
        let asked = tokio::time::timeout(bound, self.ask(config, clusters, how, user)).await;
        let secret = match asked {
            Ok(Ok(secret)) => secret,
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return Some(Err(LookupError::Timeout)),
        };
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.retain(|_, k| k.at.elapsed() < ttl);
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        let at = Instant::now();
        let entry = Kept {
            secret: secret.clone(),
            at,
        };
        kept.insert(key, entry);
        Some(Ok(Found {
            secret,
            kept: false,
        }))
    }

    /// Runs auth_query for `user`, on the kept connection if there is one.
    async fn ask(
        &self,
        config: &Config,
        clusters: &Clusters,
        how: crate::config::AuthLookup<'_>,
        user: &str,
    ) -> Result<Option<Secret>, LookupError> {
        let conn_key = (how.database.to_owned(), how.user.to_owned());
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn_key);
        let reused = idle.is_some();
        let mut conn = match idle {
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
                self.put_back(conn_key, conn);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.put_back(conn_key, conn);
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

    fn put_back(&self, key: Key, conn: Box<ServerConn>) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(conn);
    }

    /// Forgets every kept secret and connection: a reload may have changed who looks up what.
    pub fn clear(&self) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
