//! TLS termination with rustls (ring provider), for `--tls-cert`/`--tls-key`.
//!
//! The acceptor is built once at start-up; each connection's handshake runs
//! in that connection's own task, under the handshake timeout, so a client
//! that stalls mid-handshake holds only its own task and slot.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1). TLS 1.2 and 1.3 with rustls' safe defaults;
/// ALPN offers `http/1.1` only, which is what WebSocket upgrades use.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("cannot read certificates from", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("bad certificate in", cert, &e))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in", cert, &"empty"));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("cannot read key from", key, &e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions for", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid("certificate and key do not fit:", cert, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
