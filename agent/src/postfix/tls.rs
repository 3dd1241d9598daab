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
    /// `smtpd_tls_chain_files` (one sequence across its files: keys each
    /// followed by its chain; the first certificate after each key is the
    /// server's) or, if
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
        // smtpd_tls_chain_files is one sequence across its files (a key in
        // one file, its certificate in the next, as certbot writes them);
        // the cert files each start with their certificate.
        let mut certs = Vec::new();
        let mut stream = Vec::new();
        for f in &files {
            let text = tokio::fs::read(f).await.map_err(|e| {
                super::err("read TLS certificates", format!("{}: {e}", f.display()))
            })?;
            if chained {
                stream.extend_from_slice(&text);
                stream.push(b'\n');
                continue;
            }
            let found = server_certs(&text, false).map_err(|why| {
                super::err("read TLS certificates", format!("{}: {why}", f.display()))
            })?;
            certs.extend(found);
        }
        if chained {
            certs = server_certs(&stream, true).map_err(|why| {
                super::err(
                    "read TLS certificates",
                    format!("smtpd_tls_chain_files: {why}"),
                )
            })?;
        }
        let mut fingerprints = certs
            .iter()
            .map(|c| spki_fingerprint(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| super::err("read TLS certificates", why))?;
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
        // A key in one file and its chain in the next, read as one stream.
        let two = format!("{}\n{}{}", key.serialize_pem(), cert.pem(), cert.pem());
        let found = server_certs(two.as_bytes(), true).unwrap();
        assert_eq!(
            found.len(),
            1,
            "the chain after the leaf is not a server key"
        );
    }

    /// Two keys (RSA and ECDSA, say), each followed by its chain: both
    /// server certificates, in order; a file with no key has none.
    #[test]
    fn each_key_in_a_chain_file_gives_its_own_server_certificate() {
        let make = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (key, cert)
        };
        let (k1, c1) = make("one.example");
        let (k2, c2) = make("two.example");
        let (_, ca) = make("ca.example");
        let chain = format!(
            "{}{}{}{}{}",
            k1.serialize_pem(),
            c1.pem(),
            ca.pem(),
            k2.serialize_pem(),
            c2.pem()
        );
        let found = server_certs(chain.as_bytes(), true).unwrap();
        let fps: Vec<String> = found.iter().map(|c| spki_fingerprint(c).unwrap()).collect();
        let want = |c: &rcgen::Certificate| spki_fingerprint(c.der()).unwrap();
        assert_eq!(fps, [want(&c1), want(&c2)]);
        assert!(
            server_certs(c1.pem().as_bytes(), true).is_err(),
            "no key, no server certificate"
        );
    }
}
