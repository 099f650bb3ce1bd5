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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for client TLS, from PEM files. Errors name the file and what is wrong.
pub fn acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, (String, String)> {
    let certs = certificates(cert_file).map_err(|e| ("client_tls_cert_file".into(), e))?;
    let key_pem = read(key_file, "key file").map_err(|e| ("client_tls_key_file".into(), e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ("client_tls_key_file".into(), format!("\"{key_file}\": {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("client_tls_sslmode".into(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ("client_tls_key_file".into(), e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&tls.ca_file).map_err(ca)? {
                let bad = |e| ca(format!("\"{}\": {e}", tls.ca_file));
                roots.add(cert).map_err(bad)?;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
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
        let key = read(&tls.key_file, "key file").map_err(|e| ("server_tls_key_file", e))?;
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| ("server_tls_key_file", format!("\"{}\": {e}", tls.key_file)))?;
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
