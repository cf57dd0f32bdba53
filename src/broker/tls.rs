//! TLS on the Kafka listener: Kafka's `SSL` security protocol, and `SASL_SSL` with
//! `--sasl-users`. The certificate and key are read at startup and again on SIGHUP, so a
//! renewed certificate is served without a restart; with a client CA, every client must
//! present a certificate it signed (Kafka's `ssl.client.auth=required`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// The files TLS is read from, and the settings last read from them: new connections take
/// the current settings, ones already open keep those they started with.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; errors name the flag whose file is at fault.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Tls {
            current: RwLock::new(server_config(cert, key, client_ca)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
        })
    }

    /// The settings for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again. On an error the settings in use stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = server_config(&self.cert, &self.key, self.client_ca.as_deref())?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}

/// Builds the listener's TLS settings from PEM files: the certificate chain (the broker's
/// own first), its private key, and optionally the CAs that sign client certificates.
/// Errors name the flag whose file is at fault.
fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: no private key read: {e}", key.display()))?;
    // The provider is named rather than taken from the process default, which the object
    // store's HTTP client may also set up.
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("--tls-cert and --tls-key do not make a key pair: {e}"))?;
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; at least one.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let read = |e| anyhow::anyhow!("{flag} {}: {e}", path.display());
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certificates.is_empty() {
        anyhow::bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certificates)
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, "--tls-client-ca")? {
        roots
            .add(certificate)
            .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", path.display()))
}
