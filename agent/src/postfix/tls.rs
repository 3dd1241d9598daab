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
    /// The files read (main.cf, master.cf, the certificate files): a
    /// change to one may change the result.
    pub files: Vec<PathBuf>,
    /// Why no keys are published although certificates may exist: an SMTP
    /// service friends can reach does not offer STARTTLS, so a pin would
    /// hold their relayed mail in the queue for good.
    pub not_offered: Option<String>,
}

impl Postfix {
    /// The public-key fingerprints of the server certificates in
    /// `smtpd_tls_chain_files` (one sequence across its files: keys each
    /// followed by its chain; the first certificate after each key is the
    /// server's) or, if
    /// that is empty, `smtpd_tls_cert_file`, `smtpd_tls_eccert_file` and
    /// `smtpd_tls_dcert_file` (the first certificate of each). A file that
    /// cannot be read or parsed is an error naming it.
    /// No keys at all (with the reason) where an SMTP service friends can
    /// reach does not offer STARTTLS ([`Postfix::tls_not_offered`]).
    /// `next_keys` are files with keys to announce before Postfix uses
    /// them (each a PEM certificate or public key). `loopback` says
    /// friends may relay to loopback addresses (a lab), so services there
    /// count.
    pub async fn tls_fingerprints(
        &self,
        next_keys: &[PathBuf],
        loopback: bool,
    ) -> Result<ServerKeys, PostfixError> {
        let read_files = vec![
            self.config_dir.join("main.cf"),
            self.config_dir.join("master.cf"),
        ];
        if let Some(why) = self.tls_not_offered(loopback).await? {
            return Ok(ServerKeys {
                fingerprints: Vec::new(),
                files: read_files,
                not_offered: Some(why),
            });
        }
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
        for f in next_keys {
            let text = tokio::fs::read(f)
                .await
                .map_err(|e| super::err("read tls_next_keys", format!("{}: {e}", f.display())))?;
            let found = announced_keys(&text).map_err(|why| {
                super::err("read tls_next_keys", format!("{}: {why}", f.display()))
            })?;
            fingerprints.extend(found);
            files.push(f.clone());
        }
        fingerprints.sort();
        fingerprints.dedup();
        files.extend(read_files);
        Ok(ServerKeys {
            fingerprints,
            files,
            not_offered: None,
        })
    }

    /// Why this Postfix's SMTP server does not offer STARTTLS to friends,
    /// or `None` where it does: every `inet` service run by `smtpd` (and,
    /// behind a `postscreen` one, every `pass` service run by `smtpd`) that
    /// is not on a loopback address (unless `loopback`: a lab whose friends
    /// relay to loopback) has a `smtpd_tls_security_level` of
    /// `may` or `encrypt` (its master.cf `-o` override, else main.cf's; the
    /// obsolete `smtpd_use_tls`/`smtpd_enforce_tls` where that is empty),
    /// or runs in `smtpd_tls_wrappermode`.
    pub async fn tls_not_offered(&self, loopback: bool) -> Result<Option<String>, PostfixError> {
        let services = self.postconf("read master.cf", &["-M"]).await?;
        // `-x`: an override such as `-o smtpd_tls_security_level=$name`
        // comes expanded.
        let overrides = self.postconf("read master.cf", &["-xP"]).await?;
        let entries: Vec<(&str, &str, &str)> =
            services.lines().filter_map(super::master_entry).collect();
        let reachable = |(name, kind, command): &(&str, &str, &str), wanted: &str| {
            *kind == "inet" && *command == wanted && (loopback || !on_loopback(name))
        };
        let postscreen = entries.iter().any(|e| reachable(e, "postscreen"));
        let smtpds: Vec<(&str, &str)> = entries
            .iter()
            .filter(|e| reachable(e, "smtpd") || (postscreen && e.1 == "pass" && e.2 == "smtpd"))
            .map(|e| (e.0, e.1))
            .collect();
        if smtpds.is_empty() {
            return Ok(Some(
                "master.cf has no SMTP server (smtpd) that friends can reach".into(),
            ));
        }
        const PARAMS: [&str; 4] = [
            "smtpd_tls_security_level",
            "smtpd_use_tls",
            "smtpd_enforce_tls",
            "smtpd_tls_wrappermode",
        ];
        let global = self.params_expanded(&PARAMS).await?;
        for (name, kind) in smtpds {
            let value = |p: &str| {
                let key = format!("{name}/{kind}/{p}");
                overrides
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once('=')?;
                        (k.trim() == key).then(|| v.trim().to_string())
                    })
                    .unwrap_or_else(|| global[p].clone())
            };
            let yes = |p: &str| value(p).eq_ignore_ascii_case("yes");
            let level = match value("smtpd_tls_security_level").to_ascii_lowercase() {
                l if !l.is_empty() => l,
                _ if yes("smtpd_enforce_tls") => "encrypt".into(),
                _ if yes("smtpd_use_tls") => "may".into(),
                _ => "none".into(),
            };
            if !(yes("smtpd_tls_wrappermode") || level == "may" || level == "encrypt") {
                return Ok(Some(format!(
                    "master.cf service {name} ({kind}) does not offer STARTTLS (smtpd_tls_security_level = {level})"
                )));
            }
        }
        Ok(None)
    }
}

/// Whether a master.cf service name (`[host:]port`) listens on loopback
/// only, where no friend can reach it.
fn on_loopback(service: &str) -> bool {
    let Some((host, _)) = service.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The fingerprints of the keys in a `tls_next_keys` file: each
/// certificate's public key, and each bare public key.
fn announced_keys(pem: &[u8]) -> Result<Vec<String>, String> {
    let mut rd = std::io::BufReader::new(pem);
    let mut out = Vec::new();
    loop {
        match rustls_pki_types::pem::from_buf(&mut rd) {
            Ok(None) => break,
            Ok(Some((SectionKind::Certificate, der))) => out.push(spki_fingerprint(&der)?),
            Ok(Some((SectionKind::PublicKey, der))) => out.push(hex_digest(&der)),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("not PEM: {e:?}")),
        }
    }
    if out.is_empty() {
        return Err(
            "no certificate or public key found (PEM \"CERTIFICATE\" or \"PUBLIC KEY\")".into(),
        );
    }
    Ok(out)
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
    Ok(hex_digest(parsed.subject_public_key_info().as_ref()))
}

/// SHA-256 of DER bytes, `AB:CD:...`, as Postfix writes fingerprints.
fn hex_digest(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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

    /// Keys are published only where every SMTP service friends can reach
    /// offers STARTTLS: a pin on a server without it would hold relayed
    /// mail for good. Read from a real configuration with the real
    /// `postconf` (Postfix need not run); keys staged in `tls_next_keys`
    /// are announced beside the current one.
    #[tokio::test]
    async fn keys_are_published_only_where_starttls_is_offered() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mail.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let next_key = rcgen::KeyPair::generate().unwrap();
        let next = rcgen::CertificateParams::new(vec!["mail.example".into()])
            .unwrap()
            .self_signed(&next_key)
            .unwrap();
        std::fs::write(
            etc.join("chain.pem"),
            format!("{}{}", key.serialize_pem(), cert.pem()),
        )
        .unwrap();
        std::fs::write(etc.join("next.pem"), next.pem()).unwrap();
        std::fs::write(etc.join("next.pub"), next_key.public_key_pem()).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        // main.cf: these lines; master.cf: Debian's, and `extra`.
        let setup = |main: &str, extra: &str| {
            std::fs::write(
                etc.join("main.cf"),
                format!("compatibility_level = 3.6\n{main}\n"),
            )
            .unwrap();
            std::fs::write(etc.join("master.cf"), format!("{master}\n{extra}\n")).unwrap();
        };
        let chain = format!(
            "smtpd_tls_chain_files = {}",
            etc.join("chain.pem").display()
        );
        let may = format!("smtpd_tls_security_level = may\n{chain}");
        setup(&may, "");
        let pf = Postfix::open(etc, Some("hash")).await.unwrap();
        let want = spki_fingerprint(cert.der()).unwrap();
        let want_next = spki_fingerprint(next.der()).unwrap();

        let keys = pf.tls_fingerprints(&[], false).await.unwrap();
        assert_eq!(keys.fingerprints, std::slice::from_ref(&want));
        assert_eq!(keys.not_offered, None);
        assert!(keys.files.contains(&etc.join("master.cf")));

        // certbot's layout: the key in one file, its chain in the next.
        std::fs::write(etc.join("privkey.pem"), key.serialize_pem()).unwrap();
        std::fs::write(etc.join("fullchain.pem"), cert.pem()).unwrap();
        setup(
            &format!(
                "smtpd_tls_security_level = may\nsmtpd_tls_chain_files = {}, {}",
                etc.join("privkey.pem").display(),
                etc.join("fullchain.pem").display()
            ),
            "",
        );
        let keys = pf.tls_fingerprints(&[], false).await.unwrap();
        assert_eq!(
            keys.fingerprints,
            std::slice::from_ref(&want),
            "two files, one sequence"
        );
        setup(&may, "");

        let staged = [etc.join("next.pem"), etc.join("next.pub")];
        let keys = pf.tls_fingerprints(&staged, false).await.unwrap();
        let mut both = vec![want.clone(), want_next.clone()];
        both.sort();
        assert_eq!(
            keys.fingerprints, both,
            "a certificate and a bare public key of one key: one fingerprint"
        );
        assert!(keys.files.contains(&etc.join("next.pub")));
        let junk = etc.join("main.cf");
        let e = pf.tls_fingerprints(&[junk], false).await.unwrap_err();
        assert!(
            e.message.contains("main.cf") && e.step.contains("tls_next_keys"),
            "{e:?}"
        );

        setup(&chain, "");
        let keys = pf.tls_fingerprints(&[], false).await.unwrap();
        assert!(keys.fingerprints.is_empty(), "no STARTTLS, no pin");
        assert!(keys
            .not_offered
            .unwrap()
            .contains("smtpd_tls_security_level = none"));

        // A loopback re-injection port without TLS does not matter; a
        // second public port without it does, even set through $name.
        setup(
            &may,
            "127.0.0.1:10025 inet n - n - - smtpd -o smtpd_tls_security_level=none",
        );
        assert_eq!(
            pf.tls_fingerprints(&[], false).await.unwrap().fingerprints,
            std::slice::from_ref(&want)
        );
        assert!(
            pf.tls_fingerprints(&[], true)
                .await
                .unwrap()
                .fingerprints
                .is_empty(),
            "in a lab (friends relay to loopback) loopback services count"
        );
        setup(
            &format!("{may}\nplain_level = none"),
            "2525 inet n - n - - smtpd -o smtpd_tls_security_level=$plain_level",
        );
        let keys = pf.tls_fingerprints(&[], false).await.unwrap();
        assert!(keys.fingerprints.is_empty());
        assert!(keys.not_offered.unwrap().contains("2525"));
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
