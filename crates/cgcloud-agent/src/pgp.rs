//! OpenPGP public keys, as far as checking a package repository's signing key needs: the
//! primary keys' fingerprints in a downloaded key file (ASCII-armored or binary), so that a
//! role can carry the fingerprint a vendor publishes (e.g. Jenkins' `5E38…FC68`) as data and
//! refuse any other key, or a file that smuggles a second key in beside the right one.
//!
//! Only the packet framing (RFC 4880 §4.2, RFC 9580 §4.2) and the fingerprint rules
//! (v4: SHA-1 over `0x99 || len16 || body`; v6: SHA-256 over `0x9B || len32 || body`) are
//! implemented; signatures are apt's business once the key is pinned.

use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    #[error("'{0}' is not an OpenPGP fingerprint (40 or 64 hex digits)")]
    NotFingerprint(String),
    #[error("the key file holds no public key")]
    NoKey,
    #[error("the key's fingerprint is {got}, expected {want}")]
    WrongKey { got: String, want: String },
    #[error("the key file holds {n} primary keys ({list}), expected only {want}", n = got.len(), list = got.join(", "))]
    ManyKeys { got: Vec<String>, want: String },
    #[error("the key's ASCII armor is not valid base64: {0}")]
    Armor(base64::DecodeError),
    #[error("the key's armor checksum is not base64: {0}")]
    ChecksumEncoding(base64::DecodeError),
    #[error("the key's ASCII armor checksum does not match its content")]
    Checksum,
    #[error("the key file holds a secret key")]
    SecretKey,
    #[error("a v4 key packet longer than 65535 bytes")]
    LongV4,
    #[error("a key packet too long")]
    TooLong,
    #[error("a version {0} OpenPGP key (only versions 4 and 6 are understood)")]
    Version(u8),
    #[error("an empty key packet")]
    Empty,
    #[error("the key file is truncated")]
    Truncated,
    #[error("byte {0} is not the start of an OpenPGP packet")]
    NotPacket(usize),
    #[error("a key packet with a partial body length")]
    PartialLength,
}

const PUBLIC_KEY: u8 = 6;
const SECRET_KEY: u8 = 5;
const SECRET_SUBKEY: u8 = 7;

/// The key file holds exactly one primary key, whose fingerprint is `want` (hex; spaces and
/// case ignored). Returns the key as binary packets (what apt's `signed-by` reads whatever
/// its extension).
pub fn pinned_key(data: &[u8], want: &str) -> Result<Vec<u8>, PgpError> {
    let want: String = want.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if !(want.len() == 40 || want.len() == 64) || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PgpError::NotFingerprint(want));
    }
    let binary = dearmor(data)?;
    let primaries = primary_fingerprints(&binary)?;
    match primaries.as_slice() {
        [] => Err(PgpError::NoKey),
        [one] if *one == want => Ok(binary),
        [one] => Err(PgpError::WrongKey { got: one.clone(), want }),
        many => Err(PgpError::ManyKeys { got: many.to_vec(), want }),
    }
}

/// The binary packets of `data`: decoded from ASCII armor (its CRC-24 checked when present),
/// or `data` itself when it is binary already.
pub fn dearmor(data: &[u8]) -> Result<Vec<u8>, PgpError> {
    let text = match std::str::from_utf8(data) {
        Ok(t) if t.trim_start().starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----") => t,
        _ => return Ok(data.to_vec()),
    };
    let mut lines = text.lines().map(str::trim_end).skip_while(|l| !l.starts_with("-----BEGIN"));
    lines.next();
    // Armor headers (`Comment: ...`) end at the first blank line.
    let mut body: Vec<&str> = Vec::new();
    let mut in_headers = true;
    let mut crc: Option<&str> = None;
    for l in lines {
        if l.starts_with("-----END PGP PUBLIC KEY BLOCK-----") {
            break;
        }
        if in_headers {
            if l.is_empty() {
                in_headers = false;
            } else if !l.contains(": ") {
                // No headers at all: this line is already data.
                in_headers = false;
                body.push(l);
            }
            continue;
        }
        match l.strip_prefix('=') {
            Some(c) if c.len() == 4 => crc = Some(c),
            _ => body.push(l),
        }
    }
    let joined: String = body.concat();
    let bytes = base64::engine::general_purpose::STANDARD.decode(joined.as_bytes()).map_err(PgpError::Armor)?;
    if let Some(c) = crc {
        let want =
            base64::engine::general_purpose::STANDARD.decode(c.as_bytes()).map_err(PgpError::ChecksumEncoding)?;
        let got = crc24(&bytes);
        if want != [(got >> 16) as u8, (got >> 8) as u8, got as u8] {
            return Err(PgpError::Checksum);
        }
    }
    Ok(bytes)
}

fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB7_04CE;
    for b in data {
        crc ^= u32::from(*b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}

/// The fingerprints (upper-case hex) of the primary public keys among `packets`, in order.
/// Secret keys are refused: a repository key file never holds one.
pub fn primary_fingerprints(packets: &[u8]) -> Result<Vec<String>, PgpError> {
    let mut out = Vec::new();
    for (tag, body) in parse_packets(packets)? {
        match tag {
            PUBLIC_KEY => out.push(fingerprint(body)?),
            SECRET_KEY | SECRET_SUBKEY => return Err(PgpError::SecretKey),
            _ => {}
        }
    }
    Ok(out)
}

fn fingerprint(body: &[u8]) -> Result<String, PgpError> {
    let hex = |d: &[u8]| hex::encode_upper(d);
    match body.first() {
        Some(4) => {
            let len = u16::try_from(body.len()).map_err(|_| PgpError::LongV4)?;
            let mut h = Sha1::new();
            h.update([0x99]);
            h.update(len.to_be_bytes());
            h.update(body);
            Ok(hex(&h.finalize()))
        }
        Some(6) => {
            let len = u32::try_from(body.len()).map_err(|_| PgpError::TooLong)?;
            let mut h = Sha256::new();
            h.update([0x9B]);
            h.update(len.to_be_bytes());
            h.update(body);
            Ok(hex(&h.finalize()))
        }
        Some(v) => Err(PgpError::Version(*v)),
        None => Err(PgpError::Empty),
    }
}

/// Splits `data` into (tag, body) packets, old and new framing alike.
fn parse_packets(data: &[u8]) -> Result<Vec<(u8, &[u8])>, PgpError> {
    let truncated = || PgpError::Truncated;
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let ctb = data[i];
        i += 1;
        if ctb & 0x80 == 0 {
            return Err(PgpError::NotPacket(i - 1));
        }
        let (tag, len) = if ctb & 0x40 != 0 {
            let tag = ctb & 0x3f;
            let o1 = *data.get(i).ok_or_else(truncated)? as usize;
            i += 1;
            let len = match o1 {
                0..=191 => o1,
                192..=223 => {
                    let o2 = *data.get(i).ok_or_else(truncated)? as usize;
                    i += 1;
                    ((o1 - 192) << 8) + o2 + 192
                }
                255 => {
                    let b = data.get(i..i + 4).ok_or_else(truncated)?;
                    i += 4;
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                // Partial body lengths are for data packets, never for keys.
                _ => return Err(PgpError::PartialLength),
            };
            (tag, len)
        } else {
            let tag = (ctb >> 2) & 0x0f;
            let len = match ctb & 0x03 {
                0 => {
                    let b = *data.get(i).ok_or_else(truncated)? as usize;
                    i += 1;
                    b
                }
                1 => {
                    let b = data.get(i..i + 2).ok_or_else(truncated)?;
                    i += 2;
                    usize::from(u16::from_be_bytes([b[0], b[1]]))
                }
                2 => {
                    let b = data.get(i..i + 4).ok_or_else(truncated)?;
                    i += 4;
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                _ => data.len() - i,
            };
            (tag, len)
        };
        let end = i.checked_add(len).filter(|e| *e <= data.len()).ok_or_else(truncated)?;
        out.push((tag, &data[i..end]));
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with GnuPG 2.2 for these tests (`gpg --quick-gen-key`; the ed25519 key has a
    // cv25519 subkey); `gpg --with-colons --list-keys` printed these fingerprints.
    const ED25519: &str = include_str!("testdata/pgp-ed25519.asc");
    const ED25519_FPR: &str = "A57D7D92969DF37E40B22030132C0788D26E18E3";
    const RSA: &[u8] = include_bytes!("testdata/pgp-rsa.gpg");
    const RSA_FPR: &str = "D29DE41924F710DAB573BBAD3B64376A24B091A8";
    const TWO: &str = include_str!("testdata/pgp-two-keys.asc");

    #[test]
    fn fingerprints_match_gnupg() {
        assert_eq!(primary_fingerprints(&dearmor(ED25519.as_bytes()).unwrap()).unwrap(), vec![ED25519_FPR]);
        assert_eq!(primary_fingerprints(RSA).unwrap(), vec![RSA_FPR]);
        assert_eq!(primary_fingerprints(&dearmor(TWO.as_bytes()).unwrap()).unwrap(), vec![ED25519_FPR, RSA_FPR]);
    }

    #[test]
    fn only_the_pinned_key_is_accepted() {
        // Spaced and lower-case, as vendors print fingerprints.
        let spaced = "a57d 7d92 969d f37e 40b2  2030 132c 0788 d26e 18e3";
        let key = pinned_key(ED25519.as_bytes(), spaced).unwrap();
        assert_eq!(key, dearmor(ED25519.as_bytes()).unwrap());
        assert_eq!(pinned_key(RSA, RSA_FPR).unwrap(), RSA);
        let wrong = pinned_key(RSA, ED25519_FPR).unwrap_err().to_string();
        assert!(wrong.contains(RSA_FPR) && wrong.contains("expected"), "{wrong}");
        // The right key with another one beside it: apt would trust both.
        let two = pinned_key(TWO.as_bytes(), ED25519_FPR).unwrap_err().to_string();
        assert!(two.contains("2 primary keys"), "{two}");
        assert!(pinned_key(ED25519.as_bytes(), "not-hex")
            .unwrap_err()
            .to_string()
            .contains("not an OpenPGP fingerprint"));
    }

    #[test]
    fn damaged_files_are_refused() {
        // A flipped character in the armor fails its checksum.
        let damaged = ED25519.replacen("mDMEa", "mDMEb", 1);
        assert!(pinned_key(damaged.as_bytes(), ED25519_FPR).unwrap_err().to_string().contains("checksum"));
        assert!(pinned_key(&RSA[..RSA.len() - 10], RSA_FPR).unwrap_err().to_string().contains("truncated"));
        assert!(pinned_key(b"<html>not found</html>", RSA_FPR).unwrap_err().to_string().contains("not the start"));
        // A secret key packet (tag 5, new framing) is never a repository key.
        assert!(primary_fingerprints(&[0xC5, 0x01, 0x04]).unwrap_err().to_string().contains("secret key"));
    }

    #[test]
    fn new_framing_and_v6_keys() {
        // The RSA key's first packet re-framed with a new-format header gives the same key.
        let packets = parse_packets(RSA).unwrap();
        let (tag, body) = packets[0];
        assert_eq!(tag, PUBLIC_KEY);
        let mut reframed = vec![0xC6];
        let len = body.len();
        assert!((192..8383).contains(&len));
        reframed.push((((len - 192) >> 8) + 192) as u8);
        reframed.push(((len - 192) & 0xff) as u8);
        reframed.extend_from_slice(body);
        assert_eq!(primary_fingerprints(&reframed).unwrap(), vec![RSA_FPR]);
        // v6 fingerprints are SHA-256 over 0x9B, a four-byte length and the body.
        let v6 = [0x06u8, 1, 2, 3];
        let mut h = Sha256::new();
        h.update([0x9B, 0, 0, 0, 4]);
        h.update(v6);
        let want = hex::encode_upper(h.finalize());
        assert_eq!(fingerprint(&v6).unwrap(), want);
        assert!(fingerprint(&[5, 0]).unwrap_err().to_string().contains("version 5"));
    }
}
