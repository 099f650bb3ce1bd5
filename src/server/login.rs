//! Connecting to a server and authenticating with the configured credentials: SCRAM-SHA-256,
//! md5 (also from a stored md5 hash), cleartext or trust.

use super::{next_id, CancelKey, ServerConn, Target};
use crate::auth::passthrough::ClientExchange;
use crate::auth::{md5, Secret};
use crate::stream::Stream;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use std::collections::HashMap;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Who the pooler logs in to a server as.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub user: String,
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    // Never print a secret, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out connecting to the server")]
    Timeout,
    #[error("server refused login: {message} ({code})")]
    Refused { code: String, message: String },
    #[error("cannot log in to the server: {0}")]
    Auth(String),
    #[error("unexpected reply from server during login")]
    Protocol,
    #[error("TLS to the server failed: {0}")]
    Tls(String),
}

async fn read_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<Message, LoginError> {
    loop {
        if let Some(msg) = Message::parse(buf).map_err(|_| LoginError::Protocol)? {
            return Ok(msg);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(LoginError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Code and message of a server's ErrorResponse (as far as its fields read), and whether
/// every field was well-formed.
pub(super) fn error_fields(
    body: &postgres_protocol::message::backend::ErrorResponseBody,
) -> (String, String, bool) {
    use fallible_iterator::FallibleIterator;
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    loop {
        match fields.next() {
            Ok(Some(f)) => match f.type_() {
                b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                _ => {}
            },
            Ok(None) => return (code, message, true),
            Err(_) => return (code, message, false),
        }
    }
}

fn refused(body: &postgres_protocol::message::backend::ErrorResponseBody) -> LoginError {
    let (code, message, _) = error_fields(body);
    LoginError::Refused { code, message }
}

fn plain<'a>(creds: &'a Credentials, method: &str) -> Result<&'a str, LoginError> {
    match &creds.secret {
        Some(Secret::Plain(p)) => Ok(p),
        Some(_) => Err(LoginError::Auth(format!(
            "server asks for {method}, which needs the plain-text password of user \"{}\"",
            creds.user
        ))),
        None => Err(LoginError::Auth(format!(
            "server asks for a password for user \"{}\"",
            creds.user
        ))),
    }
}

/// Sends an SSLRequest and returns the server's one-byte answer ('S' or 'N').
pub async fn ask_for_tls(
    s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<u8> {
    s.write_all(&crate::protocol::startup::SSL_REQUEST_PACKET)
        .await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    Ok(answer[0])
}

/// Asks the server for TLS as server_tls_sslmode says, and wraps the stream if it agrees.
async fn secure(mut tcp: TcpStream, target: &Target) -> Result<Stream, LoginError> {
    use crate::tls::ServerMode;
    if target.tls.mode == ServerMode::Disable {
        return Ok(Stream::Plain(tcp));
    }
    match ask_for_tls(&mut tcp).await? {
        b'S' => {
            let connector = crate::tls::connector(&target.tls)
                .map_err(|(key, why)| LoginError::Tls(format!("{key}: {why}")))?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| LoginError::Tls(e.to_string()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| LoginError::Tls(e.to_string()))?;
            Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
        }
        b'N' if target.tls.mode == ServerMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(LoginError::Tls(
            "the server does not offer TLS, and server_tls_sslmode requires it".into(),
        )),
        _ => Err(LoginError::Protocol),
    }
}

pub(super) async fn connect(target: &Target) -> Result<Box<ServerConn>, LoginError> {
    let mut stream = match crate::stream::connect(&target.addr()).await? {
        Stream::Plain(tcp) => {
            tcp.set_nodelay(true)?;
            crate::stream::tune(&tcp, &target.tcp);
            secure(tcp, target).await?
        }
        // As libpq: PostgreSQL offers no TLS on a Unix socket, so none is asked for there.
        other => other,
    };
    let creds = &target.credentials;
    let mut out = BytesMut::with_capacity(256);
    frontend::startup_message(
        [
            ("user", creds.user.as_str()),
            ("database", target.dbname.as_str()),
        ],
        &mut out,
    )?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    authenticate(&mut stream, &mut buf, creds).await?;
    let (params, key) = welcome(&mut stream, &mut buf).await?;
    let (process_id, secret_key) = key.ok_or(LoginError::Protocol)?;
    let now = Instant::now();
    Ok(Box::new(ServerConn {
        id: next_id(),
        stream,
        buf,
        cancel_key: std::sync::Arc::new(CancelKey::new(target.addr(), process_id, secret_key)),
        params,
        session: super::settings::Settings::default(),
        permits: Vec::new(),
        prepared: Default::default(),
        created: now,
        last_used: now,
        stamp: 0,
        generation: 0,
        listed: None,
        ending: false,
    }))
}

/// Answers the server's authentication requests until AuthenticationOk.
async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    creds: &Credentials,
) -> Result<(), LoginError> {
    let mut out = BytesMut::with_capacity(256);
    let mut scram: Option<ScramSha256> = None;
    let mut pass: Option<ClientExchange> = None;
    loop {
        out.clear();
        match read_message(stream, buf).await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(
                    plain(creds, "a cleartext password")?.as_bytes(),
                    &mut out,
                )?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = match &creds.secret {
                    Some(Secret::Md5(h)) => h.clone(),
                    _ => md5::stored_hash(&creds.user, plain(creds, "md5")?),
                };
                frontend::password_message(md5::response(&hash, body.salt()).as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                use fallible_iterator::FallibleIterator;
                let mut mechs = body.mechanisms();
                let mut found = false;
                while let Some(m) = mechs.next().map_err(|_| LoginError::Protocol)? {
                    found |= m == sasl::SCRAM_SHA_256;
                }
                if !found {
                    return Err(LoginError::Auth(
                        "server offers no SASL mechanism we know".into(),
                    ));
                }
                if let Some(Secret::ScramKeys(keys)) = &creds.secret {
                    // SCRAM passthrough: the keys a client's proof revealed stand in for
                    // the password.
                    let (ex, first) = ClientExchange::start((**keys).clone());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        first.as_bytes(),
                        &mut out,
                    )?;
                    pass = Some(ex);
                } else {
                    let s = ScramSha256::new(
                        plain(creds, "SCRAM-SHA-256")?.as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
            }
            Message::AuthenticationSaslContinue(body) => {
                if let Some(ex) = pass.as_mut() {
                    let last = ex
                        .respond(body.data())
                        .map_err(|e| LoginError::Auth(e.to_string()))?;
                    frontend::sasl_response(last.as_bytes(), &mut out)?;
                } else {
                    let s = scram.as_mut().ok_or(LoginError::Protocol)?;
                    s.update(body.data())
                        .map_err(|e| LoginError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
            }
            Message::AuthenticationSaslFinal(body) => {
                if let Some(ex) = pass.as_ref() {
                    ex.check(body.data())
                        .map_err(|e| LoginError::Auth(e.to_string()))?;
                } else {
                    let s = scram.as_mut().ok_or(LoginError::Protocol)?;
                    s.finish(body.data())
                        .map_err(|e| LoginError::Auth(e.to_string()))?;
                }
            }
            Message::ErrorResponse(body) => return Err(refused(&body)),
            _ => return Err(LoginError::Protocol),
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

/// The server's parameters and cancel key, up to its first ReadyForQuery.
async fn welcome(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<(HashMap<String, String>, Option<(i32, i32)>), LoginError> {
    let mut params = HashMap::new();
    let mut key = None;
    loop {
        match read_message(stream, buf).await? {
            Message::ParameterStatus(p) => {
                let name = p.name().map_err(|_| LoginError::Protocol)?.to_owned();
                params.insert(
                    name,
                    p.value().map_err(|_| LoginError::Protocol)?.to_owned(),
                );
            }
            Message::BackendKeyData(k) => key = Some((k.process_id(), k.secret_key())),
            Message::ReadyForQuery(_) => return Ok((params, key)),
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => return Err(refused(&body)),
            _ => return Err(LoginError::Protocol),
        }
    }
}
