//! TLS with rustls: the acceptor for clients (`client_tls_*`) and the connector for servers
//! (`server_tls_*`), with libpq's meaning of each sslmode.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the pooler asks of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// TLS is refused ('N' to SSLRequest).
    #[default]
    Disable,
    /// TLS when the client asks for it.
    Allow,
    /// The same as allow: the client chooses.
    Prefer,
    /// Clients without TLS are refused.
    Require,
}

/// What the pooler asks of servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by `server_tls_ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} \"{path}\": {e}"))
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, "certificate file")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("\"{path}\": {e}"))?;
    if certs.is_empty() {
        return Err(format!("\"{path}\" holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("\"{path}\": {e}"))
}

/// The CA certificates of a PEM file, to check peers' certificates against.
fn roots(ca_file: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_file)? {
        roots.add(cert).map_err(|e| format!("\"{ca_file}\": {e}"))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for client TLS, from PEM files; with `ca_file`, clients may show a
/// certificate that CA signed (checked here; its name is checked by `cert` authentication),
/// and one it did not sign is refused. Errors name the setting and what is wrong.
pub fn acceptor(
    cert_file: &str,
    key_file: &str,
    ca_file: &str,
) -> Result<TlsAcceptor, (String, String)> {
    let certs = certificates(cert_file).map_err(|e| ("client_tls_cert_file".into(), e))?;
    let key = private_key(key_file).map_err(|e| ("client_tls_key_file".into(), e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("client_tls_sslmode".into(), e.to_string()))?;
    let builder = if ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let ca = |e: String| ("client_tls_ca_file".to_owned(), e);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(ca_file).map_err(ca)?),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| ca(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("client_tls_key_file".into(), e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The common name (CN) in the subject of a DER certificate: who a client certificate names,
/// as PostgreSQL's `cert` authentication reads it.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    // version [0] (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, subject, _) = tlv(rest)?;
    let mut names = subject;
    let mut found = None;
    while !names.is_empty() {
        let (_, set, next) = tlv(names)?;
        names = next;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (_, attribute, next) = tlv(attributes)?;
            attributes = next;
            let (oid_tag, oid, value) = tlv(attribute)?;
            const CN: [u8; 3] = [0x55, 0x04, 0x03];
            if oid_tag == 0x06 && oid == CN {
                let (string_tag, text, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String, T61String: bytes as they are.
                if matches!(string_tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    found = Some(String::from_utf8(text.to_vec()).ok()?);
                }
            }
        }
    }
    found
}

/// One DER item: its tag, its contents, and what follows it.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Accepts any certificate: libpq's sslmode=require and prefer check nothing either.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

/// Checks the chain against the CA but not the name, as libpq's verify-ca.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How server connections ask for TLS: server_tls_sslmode, the CA that verify-ca and
/// verify-full check with, and the certificate and key pgsluice shows if the server asks
/// for one (empty: none), as libpq's sslcert and sslkey.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServerTls {
    pub mode: ServerMode,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

/// The connector for server TLS as `tls` says, built once per `ServerTls`. Errors name the
/// setting at fault.
pub fn connector(tls: &ServerTls) -> Result<TlsConnector, (&'static str, String)> {
    static CACHE: OnceLock<Mutex<HashMap<ServerTls, TlsConnector>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(tls) {
        return Ok(c.clone());
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("server_tls_sslmode", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        ServerMode::VerifyCa | ServerMode::VerifyFull => {
            let ca = |e| ("server_tls_ca_file", e);
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(&tls.ca_file).map_err(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| ca(e.to_string()))?;
            match tls.mode {
                ServerMode::VerifyCa => Arc::new(ChainOnly(verifier)),
                _ => verifier,
            }
        }
        _ => Arc::new(Unchecked(provider())),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = if tls.cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = certificates(&tls.cert_file).map_err(|e| ("server_tls_cert_file", e))?;
        let key = private_key(&tls.key_file).map_err(|e| ("server_tls_key_file", e))?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| ("server_tls_key_file", e.to_string()))?
    };
    let connector = TlsConnector::from(Arc::new(config));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tls.clone(), connector.clone());
    Ok(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's DER with only what `common_name` walks: TBS with a version, serial,
    /// algorithm, issuer, validity, then the subject.
    fn certificate(subject: &[u8]) -> Vec<u8> {
        let item = |tag: u8, body: &[u8]| {
            let mut v = vec![tag, body.len() as u8];
            v.extend_from_slice(body);
            v
        };
        let cn = |name: &str| {
            let oid = item(0x06, &[0x55, 0x04, 0x03]);
            let value = item(0x0c, name.as_bytes());
            item(0x31, &item(0x30, &[oid, value].concat()))
        };
        let issuer = item(0x30, &cn("issuer CA"));
        let tbs = [
            item(0xa0, &item(0x02, &[2])),
            item(0x02, &[1]),
            item(0x30, &[]),
            issuer,
            item(0x30, &[]),
            item(0x30, subject),
        ]
        .concat();
        item(0x30, &item(0x30, &tbs))
    }

    #[test]
    fn the_subjects_common_name_not_the_issuers() {
        let rdn = |oid: &[u8], tag: u8, value: &str| {
            let mut attribute = vec![0x06, oid.len() as u8];
            attribute.extend_from_slice(oid);
            attribute.extend([tag, value.len() as u8]);
            attribute.extend_from_slice(value.as_bytes());
            let mut seq = vec![0x30, attribute.len() as u8];
            seq.extend(attribute);
            let mut set = vec![0x31, seq.len() as u8];
            set.extend(seq);
            set
        };
        let org = rdn(&[0x55, 0x04, 0x0a], 0x0c, "Example");
        let cn = rdn(&[0x55, 0x04, 0x03], 0x13, "app");
        assert_eq!(
            common_name(&certificate(&[org.clone(), cn].concat())).as_deref(),
            Some("app")
        );
        assert_eq!(common_name(&certificate(&org)), None);
        assert_eq!(
            common_name(&[0x30, 0x82, 0xff]),
            None,
            "a length past the end"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = common_name(&bytes);
        }
    }
}
