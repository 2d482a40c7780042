//! TLS for engines that listen on TCP: the engine's certificate (from files,
//! or a self-signed pair made once in the state dir, known to clients by
//! its fingerprint), and what clients trust (a CA, or that fingerprint).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name a self-signed engine certificate is made for, and the name
/// clients pinning a fingerprint ask for.
pub const SELF_SIGNED_NAME: &str = "kiln-engine";

/// What an engine serves TLS with.
pub struct ServerTls {
    /// Accepts TLS connections.
    pub acceptor: TlsAcceptor,
    /// `sha256:<hex>` of the certificate, for clients to pin.
    pub fingerprint: String,
}

/// The `sha256:<hex>` fingerprint of a certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Writes `bytes` to a new file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The certificate and key in `cert` and `key` (PEM), or the self-signed
/// pair in `<state_dir>/tls/` (made on first use).
pub fn server(state_dir: &Path, files: Option<(&Path, &Path)>) -> anyhow::Result<ServerTls> {
    let (cert_path, key_path) = match files {
        Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
        None => self_signed(state_dir)?,
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert_path.display()))?;
    let Some(first) = certs.first() else {
        bail!("{} holds no certificate", cert_path.display());
    };
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key {}", key_path.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS server")?;
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    })
}

/// `<state_dir>/tls`, created when missing.
fn tls_dir(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = state_dir.join("tls");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The file holding the engine's own token for TCP clients, made once.
pub fn own_token(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = tls_dir(state_dir)?.join("token");
    if !path.exists() {
        let token = kiln_api::server::new_token().context("making a token")?;
        write_private(&path, token.as_bytes())?;
    }
    Ok(path)
}

/// The engine's own certificate and key, made once.
fn self_signed(state_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = tls_dir(state_dir)?;
    let (cert, key) = (dir.join("engine.crt"), dir.join("engine.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let made = rcgen::generate_simple_self_signed(vec![SELF_SIGNED_NAME.to_string()])
        .context("making a self-signed certificate")?;
    let _ = fs::remove_file(&cert);
    let _ = fs::remove_file(&key);
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert, made.cert.pem().as_bytes())?;
    Ok((cert, key))
}

/// What a client trusts: the engine's certificate by its fingerprint, or
/// certificates a CA signed.
pub enum Trust {
    Fingerprint(String),
    Ca(PathBuf),
}

/// A TLS connector for clients that trust `trust`.
pub fn client(trust: &Trust) -> anyhow::Result<TlsConnector> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let config = match trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                let cert = cert.with_context(|| format!("reading {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a CA certificate of {}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                expected: expected.to_ascii_lowercase(),
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Trusts exactly the certificate with the expected fingerprint (the
/// handshake's signatures are still checked against it).
#[derive(Debug)]
struct Pinned {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        match bool::from(got.as_bytes().ct_eq(self.expected.as_bytes())) {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::General(format!(
                "the engine's certificate is {got}, not the pinned {}",
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
