//! [`InviteToken`]: the one line a user copies from `mxfed invite` to `mxfed join`.
//!
//! A token carries the inviter's [`PeerId`], its advertised addresses, a
//! random 32-byte secret and an expiry. Its text form is
//! `mxfed1-` + base64url(bincode(fields) ‖ first 4 bytes of SHA-256), so a
//! truncated or edited token is caught before anything is dialled.
//!
//! The secret never travels and is never stored. From it both sides derive:
//! - a [`TokenId`], which the joiner sends so the inviter can find the invite;
//! - an Ed25519 key pair seeded by the secret. The inviter stores only the
//!   public half, [`TokenKey`]; the joiner signs the TLS exporter of *this*
//!   connection and its own peer ID with the private half ([`join_proof`]).
//!
//! So a copy of the inviter's database cannot redeem an invite, the proof is
//! useless on any other connection or for any other joiner, and since the
//! inviter's certificate is checked against the token's peer ID before the
//! proof is sent, it cannot be phished.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use data_encoding::BASE64URL_NOPAD;
use ring::digest;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::id::PeerId;

/// Text that starts every token; the digit is the token format version.
pub const PREFIX: &str = "mxfed1-";

/// Most addresses a token may carry.
pub const MAX_ADDRS: usize = 8;

/// Looks up an invite on the inviter's side; derived from the secret.
pub type TokenId = [u8; 16];

/// Public key derived from the secret; the only thing the inviter stores.
pub type TokenKey = [u8; 32];

/// Length of a [`join_proof`] (an Ed25519 signature).
pub const PROOF_LEN: usize = 64;

/// A pairing invitation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    /// Who is inviting; the joiner accepts no other certificate.
    pub inviter: PeerId,
    /// Where to dial the inviter.
    pub addrs: Vec<SocketAddr>,
    /// Random single-use secret.
    pub secret: [u8; 32],
    /// Unix seconds after which the inviter refuses it.
    pub expires_at: u64,
}

impl fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteToken")
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Does not start with [`PREFIX`].
    #[error("not an mxfed invite token (it should start with {PREFIX:?})")]
    Prefix,
    /// Not valid base64url.
    #[error("invite token is damaged: not valid base64url (was it copied whole?)")]
    Encoding,
    /// The checksum does not match the content.
    #[error("invite token is damaged or was edited: checksum mismatch (was it copied whole?)")]
    Checksum,
    /// The content does not decode.
    #[error("invite token is damaged: {0}")]
    Content(String),
    /// No address, or too many.
    #[error("invite token must carry 1 to {MAX_ADDRS} addresses, found {0}")]
    Addresses(usize),
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl InviteToken {
    /// The ID under which the inviter files this invite.
    pub fn id(&self) -> TokenId {
        let h = sha256(&[b"mxfed/1 invite id", &self.secret]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[..16]);
        id
    }

    fn key_pair(&self) -> Option<Ed25519KeyPair> {
        let seed = sha256(&[b"mxfed/1 invite key", &self.secret]);
        Ed25519KeyPair::from_seed_unchecked(&seed).ok()
    }

    /// The public key the inviter stores; the joiner proves it holds the
    /// matching private key, which only the secret gives.
    pub fn key(&self) -> TokenKey {
        let mut out = [0u8; 32];
        if let Some(k) = self.key_pair() {
            out.copy_from_slice(k.public_key().as_ref());
        }
        out
    }

    /// The joiner's proof: a signature with the secret's key over this
    /// connection's TLS exporter value and the joiner's peer ID.
    pub fn join_proof(&self, exporter: &[u8; 32], joiner: &PeerId) -> Vec<u8> {
        self.key_pair()
            .map(|k| k.sign(&proof_message(exporter, joiner)).as_ref().to_vec())
            .unwrap_or_default()
    }

    /// Whether the token has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

impl fmt::Display for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = codec::encode(self).map_err(|_| fmt::Error)?;
        let sum = sha256(&[&body]);
        body.extend_from_slice(&sum[..4]);
        write!(f, "{PREFIX}{}", BASE64URL_NOPAD.encode(&body))
    }
}

impl FromStr for InviteToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let raw = BASE64URL_NOPAD
            .decode(rest.as_bytes())
            .map_err(|_| TokenError::Encoding)?;
        if raw.len() < 4 {
            return Err(TokenError::Encoding);
        }
        let (body, sum) = raw.split_at(raw.len() - 4);
        if sha256(&[body])[..4] != *sum {
            return Err(TokenError::Checksum);
        }
        let token: InviteToken =
            codec::decode(body).map_err(|e| TokenError::Content(e.to_string()))?;
        if token.addrs.is_empty() || token.addrs.len() > MAX_ADDRS {
            return Err(TokenError::Addresses(token.addrs.len()));
        }
        Ok(token)
    }
}

fn proof_message(exporter: &[u8; 32], joiner: &PeerId) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 16);
    m.extend_from_slice(b"mxfed/1 join");
    m.extend_from_slice(exporter);
    m.extend_from_slice(joiner.public_key());
    m
}

/// Checks a joiner's proof against the stored key.
pub fn verify_join_proof(
    key: &TokenKey,
    exporter: &[u8; 32],
    joiner: &PeerId,
    proof: &[u8],
) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&proof_message(exporter, joiner), proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InviteToken {
        InviteToken {
            inviter: PeerId::from_public_key([7; 32]),
            addrs: vec![
                "127.0.0.1:7787".parse().unwrap(),
                "[::1]:7787".parse().unwrap(),
            ],
            secret: [42; 32],
            expires_at: 1_800_000_000,
        }
    }

    #[test]
    fn text_round_trip_is_one_line() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with(PREFIX));
        assert!(!s.contains(char::is_whitespace));
        assert_eq!(s.parse::<InviteToken>().unwrap(), t);
        assert_eq!(format!("  {s}\n").parse::<InviteToken>().unwrap(), t);
    }

    #[test]
    fn any_edited_character_is_refused() {
        let s = sample().to_string();
        for pos in PREFIX.len()..s.len() {
            let mut b = s.clone().into_bytes();
            b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(b).unwrap();
            assert!(
                edited.parse::<InviteToken>().is_err(),
                "edit at {pos} accepted"
            );
        }
    }

    #[test]
    fn truncated_and_foreign_strings_are_refused() {
        let s = sample().to_string();
        assert_eq!(
            s[..s.len() - 4].parse::<InviteToken>().unwrap_err(),
            TokenError::Checksum
        );
        assert_eq!(
            "hello".parse::<InviteToken>().unwrap_err(),
            TokenError::Prefix
        );
        assert_eq!(
            "mxfed1-!!".parse::<InviteToken>().unwrap_err(),
            TokenError::Encoding
        );
    }

    #[test]
    fn token_without_addresses_is_refused() {
        let mut t = sample();
        t.addrs.clear();
        assert_eq!(
            t.to_string().parse::<InviteToken>().unwrap_err(),
            TokenError::Addresses(0)
        );
    }

    #[test]
    fn proof_binds_key_exporter_and_joiner() {
        let t = sample();
        let joiner = PeerId::from_public_key([9; 32]);
        let other = PeerId::from_public_key([8; 32]);
        let ex = [1u8; 32];
        let p = t.join_proof(&ex, &joiner);
        assert_eq!(p.len(), PROOF_LEN);
        assert!(verify_join_proof(&t.key(), &ex, &joiner, &p));
        assert!(!verify_join_proof(&t.key(), &[2u8; 32], &joiner, &p));
        assert!(!verify_join_proof(&t.key(), &ex, &other, &p));
        let mut other_secret = t.clone();
        other_secret.secret[0] ^= 1;
        assert!(!verify_join_proof(&other_secret.key(), &ex, &joiner, &p));
        // The stored key alone cannot make a proof: it is a public key.
        assert!(!verify_join_proof(&t.key(), &ex, &joiner, &[0u8; 64]));
    }

    #[test]
    fn id_and_key_differ_and_do_not_reveal_the_secret() {
        let t = sample();
        assert_ne!(&t.key()[..16], &t.id()[..]);
        assert_ne!(t.key(), t.secret);
        assert!(!format!("{t:?}").contains("42"));
    }

    #[test]
    fn expiry_is_judged_against_the_callers_now() {
        let t = sample();
        assert!(!t.is_expired(t.expires_at - 1));
        assert!(t.is_expired(t.expires_at));
    }
}
