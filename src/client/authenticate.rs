//! Proving who a client is: trust, md5 or SCRAM-SHA-256 against the secret the configuration
//! holds for the user, or the one auth_query finds on the server for a user it does not list;
//! a TLS certificate that names the user (cert); under auth_type = "hba", whichever
//! auth_hba_file's lines ask of the client (or peer).

use super::login::{protocol_violation, read_more};
use crate::auth::scram::ServerExchange;
use crate::auth::{md5, scram, Secret};
use crate::config::hba::{Conn, Method};
use crate::config::{AuthType, Config};
use crate::context::clients::Peer;
use crate::context::Context;
use crate::pool::lookup::{Found, Fresh};
use crate::protocol::backend;
use crate::protocol::frontend;
use crate::protocol::sqlstate;
use crate::protocol::startup;
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

/// Reads one PasswordMessage-type frame ('p') during authentication.
async fn read_password_frame(stream: &mut Stream, buf: &mut BytesMut) -> Option<BytesMut> {
    loop {
        match frontend::header(buf, startup::MAX_STARTUP_PACKET) {
            Ok(Some(h)) if h.tag != b'p' => {
                stream
                    .fatal(
                        &[],
                        sqlstate::PROTOCOL_VIOLATION,
                        "expected password response",
                    )
                    .await;
                return None;
            }
            Ok(Some(h)) if buf.len() >= h.len => {
                let mut frame = buf.split_to(h.len);
                frame.advance(5);
                return Some(frame);
            }
            Ok(_) => {
                if !read_more(stream, buf).await {
                    return None;
                }
            }
            Err(e) => {
                protocol_violation(stream, e).await;
                return None;
            }
        }
    }
}

/// Runs the configured method; on failure the client has been told and closed. `database` is
/// the pooled database the client asked for (None: the admin console), whose auth_user may
/// look up a user the configuration does not list. Some on success, holding the secret
/// auth_query found for the pools' server logins (with SCRAM, the keys the client's proof
/// revealed: SCRAM passthrough).
pub(super) async fn authenticate(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    (buf, out): (&mut BytesMut, &mut BytesMut),
    (asked, peer): (&str, Peer),
    database: Option<&str>,
    user: &str,
) -> Option<Option<Secret>> {
    let proof = match config.general.auth_type {
        AuthType::Trust => Proof::Trust,
        AuthType::Md5 => Proof::Md5,
        AuthType::ScramSha256 => Proof::Scram,
        AuthType::Cert => by_certificate(stream, user).await?,
        AuthType::Hba => by_hba(config, stream, (asked, peer), user).await?,
    };
    let (listed, found) = find_secret(ctx, config, stream, database, user).await?;
    let looked_up = found.is_some();
    let mut secret = listed.or_else(|| found.as_ref().and_then(|f| f.secret.clone()));
    let known = config.users.contains_key(user) || (looked_up && secret.is_some());
    let kept = found.as_ref().is_some_and(|f| f.kept);
    let db = database.unwrap_or_default();
    let mut for_servers = None;
    let ok = match (proof, &secret) {
        (Proof::Trust, _) => {
            if !known {
                let _ = stream.write_all(out).await;
                stream
                    .fatal(
                        &[],
                        sqlstate::INVALID_AUTHORIZATION,
                        &format!("no such user: {user}"),
                    )
                    .await;
                return None;
            }
            true
        }
        (Proof::Md5, Some(Secret::Scram(_))) | (Proof::Scram, _) => {
            let verifier = match &secret {
                Some(Secret::Plain(p)) => ctx.verifier_for(user, p),
                Some(s) => s
                    .verifier()
                    .cloned()
                    .unwrap_or_else(|| ctx.mock_verifier(user)),
                None => ctx.mock_verifier(user),
            };
            let known = known && matches!(secret, Some(Secret::Scram(_) | Secret::Plain(_)));
            match scram_exchange(stream, buf, out, verifier.clone()).await {
                Some(Some(client_key)) if known => {
                    if looked_up {
                        for_servers = match &secret {
                            Some(Secret::Scram(_)) => {
                                crate::auth::passthrough::Keys::new(verifier, client_key)
                                    .map(|k| Secret::ScramKeys(Box::new(k)))
                            }
                            other => other.clone(),
                        };
                    }
                    true
                }
                Some(_) => {
                    // The proof was made with the kept salt: this attempt fails, the next
                    // one meets the new secret.
                    refreshed(ctx, config, (db, user), kept, &mut secret).await;
                    false
                }
                None => return None,
            }
        }
        (Proof::Md5, _) => {
            let salt: [u8; 4] = rand::random();
            backend::authentication_md5(out, salt);
            if stream.write_all(out).await.is_err() {
                return None;
            }
            out.clear();
            let frame = read_password_frame(stream, buf).await?;
            let answer = match frontend::password(&frame) {
                Ok(a) => a,
                Err(e) => {
                    protocol_violation(stream, e).await;
                    return None;
                }
            };
            let check = |secret: &Option<Secret>| match secret {
                Some(Secret::Plain(p)) => md5::verify(&md5::stored_hash(user, p), salt, answer),
                Some(Secret::Md5(h)) => md5::verify(h, salt, answer),
                _ => false,
            };
            // The answer holds only our salt: it can be checked against a fresh secret too.
            let ok = check(&secret)
                || (refreshed(ctx, config, (db, user), kept, &mut secret).await && check(&secret));
            if ok && looked_up {
                for_servers = secret.clone();
            }
            ok
        }
    };
    if !ok {
        tracing::info!(user, "password authentication failed");
        stream
            .fatal(
                &[],
                sqlstate::INVALID_PASSWORD,
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
        return None;
    }
    Some(for_servers)
}

/// What a client must show: nothing, or its password by md5 or SCRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Trust,
    Md5,
    Scram,
}

/// auth_type = "hba": what auth_hba_file's first matching line asks of this client, who asked
/// for database `asked`; None when it is refused (and has been told, in PostgreSQL's words).
async fn by_hba(
    config: &Config,
    stream: &mut Stream,
    (asked, peer): (&str, Peer),
    user: &str,
) -> Option<Proof> {
    let conn = match peer {
        Peer::Unix { .. } => Conn::Local,
        Peer::Tcp(addr) => Conn::Host {
            ip: addr.ip(),
            tls: stream.is_tls(),
        },
    };
    let method = config
        .hba
        .as_ref()
        .and_then(|h| h.method(conn, asked, user));
    let refused = |why: &str| {
        let host = match conn {
            Conn::Local => "[local]".to_owned(),
            Conn::Host { ip, .. } => ip.to_string(),
        };
        let encryption = match stream.is_tls() {
            true => "SSL encryption",
            false => "no encryption",
        };
        format!("{why} for host \"{host}\", user \"{user}\", database \"{asked}\", {encryption}")
    };
    let message = match method {
        Some(Method::Trust) => return Some(Proof::Trust),
        Some(Method::Md5) => return Some(Proof::Md5),
        Some(Method::ScramSha256) => return Some(Proof::Scram),
        Some(Method::Peer) => {
            let runs_as = stream
                .peer_uid()
                .and_then(crate::auth::peer::system_user_name);
            if runs_as.as_deref() == Some(user) {
                return Some(Proof::Trust);
            }
            tracing::info!(user, system_user = ?runs_as, "peer authentication failed");
            format!("Peer authentication failed for user \"{user}\"")
        }
        Some(Method::Cert) => return by_certificate(stream, user).await,
        Some(Method::Reject) => refused("pg_hba.conf rejects connection"),
        None => refused("no pg_hba.conf entry"),
    };
    stream
        .fatal(&[], sqlstate::INVALID_AUTHORIZATION, &message)
        .await;
    None
}

/// `cert` authentication: the client's TLS certificate (its CA checked in the handshake)
/// must name the user it asks for; then it needs no password. None when it is refused (and
/// has been told, in PostgreSQL's words).
async fn by_certificate(stream: &mut Stream, user: &str) -> Option<Proof> {
    let message = match stream.client_certificate_name() {
        Some(name) if name == user => return Some(Proof::Trust),
        Some(name) => {
            tracing::info!(user, certificate = %name, "certificate authentication failed");
            format!("certificate authentication failed for user \"{user}\"")
        }
        None => "connection requires a valid client certificate".to_owned(),
    };
    stream
        .fatal(&[], sqlstate::INVALID_AUTHORIZATION, &message)
        .await;
    None
}

/// The user's secret as configured, or else as auth_query finds it (when the client asked for
/// a pooled database whose auth_user is set). None when the lookup failed (the client has been
/// told).
async fn find_secret(
    ctx: &Context,
    config: &Config,
    stream: &mut Stream,
    database: Option<&str>,
    user: &str,
) -> Option<(Option<Secret>, Option<Found>)> {
    let listed = config.user_secret(user);
    // Only a user with no password of its own is looked up.
    let lookup = match (&listed, database) {
        (None, Some(db)) => {
            ctx.lookups
                .secret(config, &ctx.clusters, db, user, Fresh::No)
                .await
        }
        _ => None,
    };
    match lookup {
        None => Some((listed, None)),
        Some(Ok(found)) => Some((listed, Some(found))),
        Some(Err(e)) => {
            tracing::warn!(user, error = %e, "auth_query failed");
            let message = format!("password lookup failed: {e}");
            stream
                .fatal(&[], sqlstate::CONNECTION_FAILURE, &message)
                .await;
            None
        }
    }
}

/// A kept secret that failed, asked for again (the password may have been rotated): true
/// when the server now has another.
async fn refreshed(
    ctx: &Context,
    config: &Config,
    (database, user): (&str, &str),
    kept: bool,
    secret: &mut Option<Secret>,
) -> bool {
    if !kept {
        return false;
    }
    let fresh = ctx
        .lookups
        .secret(config, &ctx.clusters, database, user, Fresh::Yes)
        .await;
    match fresh {
        Some(Ok(fresh)) if fresh.secret != *secret => {
            *secret = fresh.secret;
            true
        }
        _ => false,
    }
}

/// Some(Some(ClientKey)) when the proof checked out, Some(None) when it did not, None when
/// the client broke the exchange (and has been told).
async fn scram_exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    verifier: scram::Verifier,
) -> Option<Option<[u8; 32]>> {
    backend::authentication_sasl(out, scram::MECHANISM);
    stream.write_all(out).await.ok()?;
    out.clear();
    let frame = read_password_frame(stream, buf).await?;
    let (mechanism, first) = match frontend::sasl_initial_response(&frame) {
        Ok(r) => r,
        Err(e) => {
            protocol_violation(stream, e).await;
            return None;
        }
    };
    if mechanism != scram::MECHANISM.as_bytes() {
        stream
            .fatal(
                &[],
                sqlstate::PROTOCOL_VIOLATION,
                "client selected an invalid SASL authentication mechanism",
            )
            .await;
        return None;
    }
    let (exchange, server_first) = match ServerExchange::start(verifier, first, &scram::nonce()) {
        Ok(r) => r,
        Err(e) => {
            stream
                .fatal(&[], sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                .await;
            return None;
        }
    };
    backend::authentication_sasl_continue(out, server_first.as_bytes());
    stream.write_all(out).await.ok()?;
    out.clear();
    let frame = read_password_frame(stream, buf).await?;
    match exchange.finish(&frame) {
        Ok(proven) => {
            backend::authentication_sasl_final(out, proven.server_final.as_bytes());
            Some(Some(proven.client_key))
        }
        Err(scram::ScramError::Proof) => Some(None),
        Err(e) => {
            stream
                .fatal(&[], sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                .await;
            None
        }
    }
}
