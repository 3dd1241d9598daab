//! The public-key fingerprints of this Postfix's SMTP server certificates
//! ([`Postfix::tls_fingerprints`]), which friends pin (`fingerprint` TLS
//! level, `match=`) when they relay mail to this server.

use std::path::PathBuf;

use rustls_pki_types::pem::SectionKind;
use rustls_pki_types::CertificateDer;

use super::{list_tokens, Postfix, PostfixError};

/// The fingerprints, and the files they were read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerKeys {
    /// SHA-256 of each server certificate's SubjectPublicKeyInfo, as
    /// Postfix writes fingerprints (`AB:CD:...`), sorted, each once.
    pub fingerprints: Vec<String>,
    /// The certificate files.
    pub files: Vec<PathBuf>,
}

impl Postfix {
    /// The public-key fingerprints of the server certificates in
    /// `smtpd_tls_chain_files` (each file: keys each followed by its
    /// chain; the first certificate after each key is the server's) or, if
    /// that is empty, `smtpd_tls_cert_file`, `smtpd_tls_eccert_file` and
    /// `smtpd_tls_dcert_file` (the first certificate of each). A file that
    /// cannot be read or parsed is an error naming it.
    pub async fn tls_fingerprints(&self) -> Result<ServerKeys, PostfixError> {
        let chain = self.param_expanded("smtpd_tls_chain_files").await?;
        let mut files: Vec<PathBuf> = list_tokens(&chain).iter().map(PathBuf::from).collect();
        let chained = !files.is_empty();
        if !chained {
            for param in [
                "smtpd_tls_cert_file",
                "smtpd_tls_eccert_file",
                "smtpd_tls_dcert_file",
            ] {
                let v = self.param_expanded(param).await?;
                files.extend(list_tokens(&v).iter().map(PathBuf::from));
            }
        }
        let mut fingerprints = Vec::new();
        for f in &files {
            let text = tokio::fs::read(f).await.map_err(|e| {
                super::err("read TLS certificates", format!("{}: {e}", f.display()))
            })?;
            let found = server_certs(&text, chained).map_err(|why| {
                super::err("read TLS certificates", format!("{}: {why}", f.display()))
            })?;
            fingerprints.extend(
                found
                    .iter()
                    .map(|c| spki_fingerprint(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|why| {
                        super::err("read TLS certificates", format!("{}: {why}", f.display()))
                    })?,
            );
        }
        fingerprints.sort();
        fingerprints.dedup();
        Ok(ServerKeys {
            fingerprints,
            files,
        })
    }
}

/// The server certificates in a PEM file: with `chained`, the first
/// certificate after each private key; else the file's first certificate.
fn server_certs(pem: &[u8], chained: bool) -> Result<Vec<Vec<u8>>, String> {
    let mut rd = std::io::BufReader::new(pem);
    let mut out = Vec::new();
    let mut after_key = !chained;
    loop {
        match rustls_pki_types::pem::from_buf(&mut rd) {
            Ok(None) => break,
            Ok(Some((kind, der))) => match kind {
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => after_key = true,
                SectionKind::Certificate if after_key => {
                    out.push(der);
                    after_key = false;
                    if !chained {
                        break;
                    }
                }
                _ => {}
            },
            Err(e) => return Err(format!("not PEM: {e:?}")),
        }
    }
    if out.is_empty() {
        return Err("no server certificate found".into());
    }
    Ok(out)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, `AB:CD:...`.
fn spki_fingerprint(cert: &[u8]) -> Result<String, String> {
    let der = CertificateDer::from(cert);
    let parsed =
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("not a certificate: {e:?}"))?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same fingerprint as `openssl x509 -noout -pubkey | openssl pkey
    /// -pubin -outform DER | openssl dgst -sha256 -c` (FACTS.md), here for
    /// rcgen's own key: the SHA-256 of the DER SubjectPublicKeyInfo.
    #[test]
    fn the_fingerprint_is_the_sha256_of_the_public_key_info() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mail.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let want: String = ring::digest::digest(
            &ring::digest::SHA256,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        )
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
        assert_eq!(spki_fingerprint(cert.der()).unwrap(), want);
        // From PEM: a chain file (key, then its certificate) and a plain one.
        let chain = format!("{}{}", key.serialize_pem(), cert.pem());
        let found = server_certs(chain.as_bytes(), true).unwrap();
        assert_eq!(spki_fingerprint(&found[0]).unwrap(), want);
        let found = server_certs(cert.pem().as_bytes(), false).unwrap();
        assert_eq!(spki_fingerprint(&found[0]).unwrap(), want);
        assert!(server_certs(b"junk", false).is_err());
    }
}
