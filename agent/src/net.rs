//! The QUIC endpoint and the rustls verifiers that pin peers by key.
//!
//! One [`quinn::Endpoint`] both serves and dials on the same UDP socket, with
//! ALPN `mxfed/1` and TLS 1.3 only, on the `ring` provider.
//!
//! TLS is mutual, and certificates are judged by their Ed25519 key alone:
//! - as a client we accept exactly one server key, the [`PeerId`] we meant
//!   to dial ([`PinnedServer`]);
//! - as a server we accept any Ed25519 client key ([`AnyEd25519Client`]); the
//!   session layer then decides what that key may do, which for an unpaired
//!   key is only to present an invite.
//!
//! Both still check the handshake signature with rustls's own
//! `verify_tls13_signature`, so the other side proves it holds the key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use mxfed_proto::{msg::ALPN, PeerId};

use crate::identity::Identity;

/// Keep-alive interval; well below [`IDLE_TIMEOUT`] on both sides.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A session with no traffic (keep-alives included) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a peer may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Bytes a peer may have in flight on one stream (a frame is at most 1 MiB).
pub const MAX_STREAM_WINDOW: usize = 1 << 20;
/// Bytes a peer may have in flight on one connection, all streams together.
pub const MAX_CONNECTION_WINDOW: usize = 4 << 20;

/// Endpoint setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("quic configuration: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind udp {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The peer ID in a certificate; the key must be Ed25519.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    PeerId::from_spki(parsed.subject_public_key_info().as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
}

/// The peer ID of an established connection's remote side.
pub fn remote_id(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    peer_id_of(certs.first()?).ok()
}

/// Client side: accept only the server whose key is `expected`.
#[derive(Debug)]
pub struct PinnedServer {
    expected: PeerId,
    algs: WebPkiSupportedAlgorithms,
}

/// The server presented a key other than the pinned one.
struct WrongPeer {
    expected: PeerId,
    found: PeerId,
}

impl std::fmt::Display for WrongPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server is peer {}, not the expected {}",
            self.found, self.expected
        )
    }
}

// rustls shows `OtherError` with Debug; make that the readable sentence.
impl std::fmt::Debug for WrongPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WrongPeer {}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = peer_id_of(end_entity)?;
        if found != self.expected {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected: self.expected,
                    found,
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: any Ed25519 client key; authorisation is the session layer's job.
#[derive(Debug)]
pub struct AnyEd25519Client {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEd25519Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        peer_id_of(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// TLS 1.2 never happens (QUIC is TLS 1.3 only); refuse it outright.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // IDLE_TIMEOUT is a small constant that always fits a VarInt.
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Bound what one connection can make us buffer (quinn's connection-level
    // default is unlimited): a stranger's handshake must not cost megabytes.
    t.stream_receive_window((MAX_STREAM_WINDOW as u32).into());
    t.receive_window((MAX_CONNECTION_WINDOW as u32).into());
    t.send_window(MAX_CONNECTION_WINDOW as u64);
    t.datagram_receive_buffer_size(None);
    Arc::new(t)
}

/// The server half: our certificate, any Ed25519 client.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyEd25519Client { algs }))
        .with_single_cert(identity.cert_chain(), identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    // A peer's address is evidence (the ownership proof counts where its
    // key was seen), so it must be the one the handshake validated: no
    // connection migration, which would let one authenticated packet from a
    // spoofed source move the connection to another address.
    config.migration(false);
    Ok(config)
}

/// The client half for dialling `expected`: our certificate, only their key.
pub fn client_config(
    identity: &Identity,
    expected: PeerId,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { expected, algs }))
        .with_client_auth_cert(identity.cert_chain(), identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Binds the endpoint that serves and dials.
pub fn bind(identity: &Identity, listen: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    quinn::Endpoint::server(server_config(identity)?, listen).map_err(|source| NetError::Bind {
        addr: listen,
        source,
    })
}
