//! [`Identity`]: this agent's Ed25519 key and self-signed certificate.
//!
//! Files, both mode 0600, in the data dir:
//! - `identity.key`: the PKCS#8 private key (PEM);
//! - `identity.crt`: an rcgen self-signed certificate for it (PEM).
//!
//! Peers pin the key, never the certificate, so a missing certificate is
//! simply made again from the key and the [`PeerId`] stays the same.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair, PKCS_ED25519};
use ring::signature::Ed25519KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use mxfed_proto::{msg::SERVER_NAME, PeerId};

const KEY_FILE: &str = "identity.key";
const CERT_FILE: &str = "identity.crt";

/// This agent's key pair and certificate.
pub struct Identity {
    /// The peer ID, i.e. the public key.
    pub id: PeerId,
    key_der: Vec<u8>,
    cert_der: CertificateDer<'static>,
    signer: Ed25519KeyPair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why the identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exists but its content is not usable.
    #[error("identity file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Key generation failed.
    #[error("cannot generate identity: {0}")]
    Generate(String),
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn make_cert(key: &KeyPair) -> Result<CertificateDer<'static>, IdentityError> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    // A random serial makes each renewal a distinct certificate.
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| IdentityError::Generate("no randomness".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(key)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    Ok(cert.der().clone())
}

impl Identity {
    /// Whether `data_dir` already holds a key.
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(KEY_FILE).exists()
    }

    /// Generates a key pair and certificate and writes them to `data_dir`.
    /// Refuses to replace an existing key.
    pub fn create(data_dir: &Path) -> Result<Self, IdentityError> {
        let key_path = data_dir.join(KEY_FILE);
        if key_path.exists() {
            return Err(IdentityError::Io {
                path: key_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; refusing to replace an identity",
                ),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        let cert = make_cert(&key)?;
        write_private(&data_dir.join(CERT_FILE), pem_cert(&cert).as_bytes())?;
        Self::load(data_dir)
    }

    /// Loads the identity from `data_dir`, re-making the certificate if it is missing.
    pub fn load(data_dir: &Path) -> Result<Self, IdentityError> {
        let key_path = data_dir.join(KEY_FILE);
        let pem = std::fs::read_to_string(&key_path).map_err(|source| IdentityError::Io {
            path: key_path.clone(),
            source,
        })?;
        let corrupt = |path: &Path, message: String| IdentityError::Corrupt {
            path: path.into(),
            message,
        };
        let key = KeyPair::from_pem(&pem).map_err(|e| corrupt(&key_path, e.to_string()))?;
        let raw: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| corrupt(&key_path, "not an Ed25519 key".into()))?;
        let key_der = key.serialize_der();
        let signer = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key_der)
            .map_err(|e| corrupt(&key_path, e.to_string()))?;

        let cert_path = data_dir.join(CERT_FILE);
        let cert_der = if cert_path.exists() {
            let cert = CertificateDer::from_pem_file(&cert_path)
                .map_err(|e| corrupt(&cert_path, e.to_string()))?;
            let parsed = rustls::server::ParsedCertificate::try_from(&cert)
                .map_err(|e| corrupt(&cert_path, e.to_string()))?;
            if PeerId::from_spki(parsed.subject_public_key_info().as_ref()).ok()
                != Some(PeerId::from_public_key(raw))
            {
                return Err(corrupt(
                    &cert_path,
                    format!("does not match the key in {}", key_path.display()),
                ));
            }
            cert
        } else {
            tracing::info!(path = %cert_path.display(), "certificate missing; making a new one from the existing key (peer ID unchanged)");
            let cert = make_cert(&key)?;
            write_private(&cert_path, pem_cert(&cert).as_bytes())?;
            cert
        };
        Ok(Self {
            id: PeerId::from_public_key(raw),
            key_der,
            cert_der,
            signer,
        })
    }

    /// The certificate chain rustls presents.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The private key rustls signs the handshake with.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Signs a message with the identity key (Ed25519).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer.sign(message).as_ref().to_vec()
    }
}

fn pem_cert(cert: &CertificateDer<'_>) -> String {
    let b64 = data_encoding::BASE64.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_then_load_keeps_the_id_and_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::create(d.path()).unwrap();
        for f in [KEY_FILE, CERT_FILE] {
            let mode = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let b = Identity::load(d.path()).unwrap();
        assert_eq!(a.id, b.id);
        let sig = b.sign(b"hello");
        assert!(a.id.verify(b"hello", &sig));
        assert!(!a.id.verify(b"hellO", &sig));
    }

    #[test]
    fn renewing_the_certificate_keeps_the_id() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::create(d.path()).unwrap();
        std::fs::remove_file(d.path().join(CERT_FILE)).unwrap();
        let b = Identity::load(d.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.cert_der, b.cert_der, "a new certificate was made");
    }

    #[test]
    fn create_refuses_to_replace_and_corrupt_key_is_named() {
        let d = tempfile::tempdir().unwrap();
        Identity::create(d.path()).unwrap();
        assert!(Identity::create(d.path()).is_err());
        std::fs::write(d.path().join(KEY_FILE), "garbage").unwrap();
        let e = Identity::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("identity.key") && e.contains("corrupt"), "{e}");
    }
}
