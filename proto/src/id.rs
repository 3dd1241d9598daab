//! [`PeerId`]: an agent's identity.
//!
//! The ID *is* the agent's Ed25519 public key, so it is derived from the key
//! and not from the certificate: renewing the certificate keeps the ID, and a
//! signature can be checked against a peer ID with nothing else stored.
//!
//! It is shown the way Syncthing shows device IDs: the 32 bytes in base32
//! (52 characters), split into four blocks of 13, each followed by a Luhn
//! mod 32 check character, then printed as eight dash-separated groups of
//! seven, e.g. `MFRGGZD-...`. A mistyped character is caught by the checks.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An agent's identity: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

/// Why a string or key is not a peer ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Wrong number of characters once dashes and spaces are removed.
    #[error("peer id must have 56 characters (without dashes), found {0}")]
    Length(usize),
    /// A character outside A-Z and 2-7.
    #[error("peer id contains {0:?}, which is not a base32 character")]
    Character(char),
    /// A check character does not match its block: a typo.
    #[error("peer id check character {0} of 4 does not match (typo?)")]
    Check(usize),
    /// The public key is not an Ed25519 SubjectPublicKeyInfo.
    #[error("public key is not Ed25519")]
    NotEd25519,
}

impl PeerId {
    /// The ID of an Ed25519 public key given as its 32 raw bytes.
    pub fn from_public_key(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The ID of a DER SubjectPublicKeyInfo, which must be Ed25519.
    pub fn from_spki(spki: &[u8]) -> Result<Self, IdError> {
        let key = spki
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .ok_or(IdError::NotEd25519)?;
        let key: [u8; 32] = key.try_into().map_err(|_| IdError::NotEd25519)?;
        Ok(Self(key))
    }

    /// The DER SubjectPublicKeyInfo for this key.
    pub fn spki(&self) -> Vec<u8> {
        let mut out = ED25519_SPKI_PREFIX.to_vec();
        out.extend_from_slice(&self.0);
        out
    }

    /// The 32 raw public key bytes.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first group of the display form, enough to tell peers apart by eye.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_string()
    }

    /// Checks an Ed25519 signature made by this peer's key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

fn luhn32(block: &[u8]) -> u8 {
    let mut factor = 1;
    let mut sum = 0usize;
    for &c in block.iter().rev() {
        // block holds only ALPHABET characters, produced or checked by the caller.
        let code = ALPHABET.iter().position(|&a| a == c).unwrap_or(0);
        factor = if factor == 2 { 1 } else { 2 };
        let addend = factor * code;
        sum += addend / 32 + addend % 32;
    }
    ALPHABET[(32 - sum % 32) % 32]
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b32 = BASE32_NOPAD.encode(&self.0);
        let mut with_checks = Vec::with_capacity(56);
        for block in b32.as_bytes().chunks(13) {
            with_checks.extend_from_slice(block);
            with_checks.push(luhn32(block));
        }
        for (i, group) in with_checks.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // Only ALPHABET bytes, so always UTF-8.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = Vec::with_capacity(56);
        for c in s.chars() {
            match c {
                '-' | ' ' => {}
                c if c.is_ascii() && ALPHABET.contains(&(c.to_ascii_uppercase() as u8)) => {
                    chars.push(c.to_ascii_uppercase() as u8)
                }
                c => return Err(IdError::Character(c)),
            }
        }
        if chars.len() != 56 {
            return Err(IdError::Length(chars.len()));
        }
        let mut b32 = Vec::with_capacity(52);
        for (i, block) in chars.chunks(14).enumerate() {
            let (data, check) = block.split_at(13);
            if luhn32(data) != check[0] {
                return Err(IdError::Check(i + 1));
            }
            b32.extend_from_slice(data);
        }
        let bytes = BASE32_NOPAD
            .decode(&b32)
            .map_err(|_| IdError::Length(chars.len()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| IdError::Length(chars.len()))?;
        Ok(Self(key))
    }
}

/// Human-readable formats (JSON, TOML) get the display string; bincode gets the 32 bytes.
impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(Self(<[u8; 32]>::deserialize(d)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PeerId {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        PeerId::from_public_key(k)
    }

    #[test]
    fn display_is_eight_groups_of_seven() {
        let s = sample().to_string();
        let groups: Vec<&str> = s.split('-').collect();
        assert_eq!(groups.len(), 8, "{s}");
        assert!(groups.iter().all(|g| g.len() == 7), "{s}");
    }

    #[test]
    fn display_parses_back_case_and_dashes_insensitive() {
        let id = sample();
        let s = id.to_string();
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert_eq!(
            s.to_lowercase().replace('-', "").parse::<PeerId>().unwrap(),
            id
        );
    }

    #[test]
    fn a_single_typo_is_caught_by_a_check_character() {
        let s = sample().to_string().replace('-', "");
        for pos in 0..56 {
            let mut b = s.clone().into_bytes();
            b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(b).unwrap();
            assert!(typo.parse::<PeerId>().is_err(), "typo at {pos} accepted");
        }
    }

    #[test]
    fn spki_round_trip_and_non_ed25519_refused() {
        let id = sample();
        assert_eq!(PeerId::from_spki(&id.spki()).unwrap(), id);
        let mut rsa = id.spki();
        rsa[8] = 0x71;
        assert_eq!(PeerId::from_spki(&rsa), Err(IdError::NotEd25519));
        assert_eq!(
            PeerId::from_spki(&id.spki()[..40]),
            Err(IdError::NotEd25519)
        );
    }

    #[test]
    fn json_uses_the_display_form_and_bincode_the_bytes() {
        let id = sample();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<PeerId>(&json).unwrap(), id);
        let bytes = crate::codec::encode(&id).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(crate::codec::decode::<PeerId>(&bytes).unwrap(), id);
    }
}
