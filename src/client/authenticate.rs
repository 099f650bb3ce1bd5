//! Proving who a client is: trust, md5 or SCRAM-SHA-256 against the secret the configuration
//! holds for the user, or the one auth_query finds on the server for a user it does not list.

use super::login::{protocol_violation, read_more};
use crate::auth::scram::ServerExchange;
use crate::auth::{md5, scram, Secret};
use crate::config::{AuthType, Config};
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
    buf: &mut BytesMut,
    out: &mut BytesMut,
    database: Option<&str>,
    user: &str,
) -> Option<Option<Secret>> {
    let (listed, found) = find_secret(ctx, config, stream, database, user).await?;
    let looked_up = found.is_some();
    let mut secret = listed.or_else(|| found.as_ref().and_then(|f| f.secret.clone()));
    let known = config.users.contains_key(user) || (looked_up && secret.is_some());
    let kept = found.as_ref().is_some_and(|f| f.kept);
    let db = database.unwrap_or_default();
    let mut for_servers = None;
    let ok = match (config.general.auth_type, &secret) {
        (AuthType::Trust, _) => {
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
        (AuthType::Md5, Some(Secret::Scram(_))) | (AuthType::ScramSha256, _) => {
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
        (AuthType::Md5, _) => {
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
