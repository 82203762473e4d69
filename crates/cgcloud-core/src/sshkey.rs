//! OpenSSH public keys: parsing key files and `authorized_keys` lines, and the fingerprints EC2
//! reports for imported key pairs.
//!
//! EC2 computes fingerprints differently per key type: an imported RSA key's fingerprint is the
//! MD5 of its DER SubjectPublicKeyInfo (colon-hex); an imported ed25519 key's is the base64
//! SHA-256 of the OpenSSH key blob (what `ssh-keygen -l` prints). Emulators differ (moto gives a
//! colon-hex SHA-256 of the DER SubjectPublicKeyInfo for ed25519), so [`PublicKey::matches_fingerprint`]
//! accepts every format that is derived from the same key with a collision-resistant hash.

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("this is a private key; pass the public key instead (usually the same path with '.pub')")]
    PrivateKey,
    #[error("not an OpenSSH public key: {0}")]
    Malformed(&'static str),
    #[error("unsupported key type '{0}': EC2 key pairs must be ssh-rsa or ssh-ed25519")]
    UnsupportedType(String),
    #[error("the file holds {0} keys; pass a file with exactly one public key")]
    NotExactlyOne(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Rsa => "rsa",
            KeyType::Ed25519 => "ed25519",
        })
    }
}

/// An RSA or ed25519 public key in OpenSSH form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_type: KeyType,
    /// The OpenSSH wire-format blob (the base64-decoded middle field).
    pub blob: Vec<u8>,
    pub comment: String,
}

fn read_string<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], KeyError> {
    if data.len() < 4 {
        return Err(KeyError::Malformed("truncated key blob"));
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if data.len() < 4 + len {
        return Err(KeyError::Malformed("truncated key blob"));
    }
    let s = &data[4..4 + len];
    *data = &data[4 + len..];
    Ok(s)
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from an SSH mpint (already big-endian two's complement).
fn der_integer(mpint: &[u8]) -> Vec<u8> {
    let mut v = mpint;
    while v.len() > 1 && v[0] == 0 && v[1] & 0x80 == 0 {
        v = &v[1..];
    }
    if v.is_empty() {
        return der(0x02, &[0]);
    }
    if v[0] & 0x80 != 0 {
        let mut padded = vec![0];
        padded.extend_from_slice(v);
        return der(0x02, &padded);
    }
    der(0x02, v)
}

/// `aa:bb:...`, the form EC2 gives MD5 fingerprints in.
fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| hex::encode([*b])).collect::<Vec<_>>().join(":")
}

impl PublicKey {
    /// Parses a single key line: `type base64 [comment]`.
    pub fn parse_line(line: &str) -> Result<Self, KeyError> {
        let line = line.trim();
        if line.starts_with("-----BEGIN") || line.contains("PRIVATE KEY") {
            return Err(KeyError::PrivateKey);
        }
        let mut fields = line.splitn(3, char::is_whitespace);
        let type_name = fields.next().filter(|s| !s.is_empty()).ok_or(KeyError::Malformed("empty line"))?;
        let key_type = match type_name {
            "ssh-rsa" => KeyType::Rsa,
            "ssh-ed25519" => KeyType::Ed25519,
            t if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-") => {
                return Err(KeyError::UnsupportedType(t.to_owned()))
            }
            _ => return Err(KeyError::Malformed("expected 'ssh-rsa' or 'ssh-ed25519' followed by base64")),
        };
        let b64 = fields.next().ok_or(KeyError::Malformed("missing base64 key data"))?.trim();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| KeyError::Malformed("the key data is not valid base64"))?;
        let comment = fields.next().unwrap_or("").trim().to_owned();
        let key = PublicKey { key_type, blob, comment };
        key.validate(type_name)?;
        Ok(key)
    }

    /// Parses a key in its bare form, `type base64` and nothing else: no comment, no other
    /// whitespace, canonical base64. For keys a box publishes about itself (the host key tag),
    /// which are copied into known_hosts files: a newline or a second field there would let
    /// the box add lines (`* ssh-ed25519 ...`, `@revoked ...`) about other hosts.
    pub fn parse_bare(text: &str) -> Result<Self, KeyError> {
        if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(KeyError::Malformed("control characters, tabs or non-ASCII text around the key"));
        }
        let (_, b64) = text.split_once(' ').ok_or(KeyError::Malformed("expected 'type base64'"))?;
        if b64.contains(' ') {
            return Err(KeyError::Malformed("text after the key data (only 'type base64' is accepted)"));
        }
        let key = Self::parse_line(text)?;
        // Also catches padding or trailing bits that decode to the same blob.
        if key.to_openssh() != text {
            return Err(KeyError::Malformed("the key is not in canonical 'type base64' form"));
        }
        Ok(key)
    }

    /// Parses the contents of a public key file, which must hold exactly one key.
    pub fn parse_file(contents: &str) -> Result<Self, KeyError> {
        if contents.contains("PRIVATE KEY-----") {
            return Err(KeyError::PrivateKey);
        }
        let lines: Vec<&str> =
            contents.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        match lines.as_slice() {
            [one] => Self::parse_line(one),
            other => Err(KeyError::NotExactlyOne(other.len())),
        }
    }

    fn validate(&self, type_name: &str) -> Result<(), KeyError> {
        let mut data = self.blob.as_slice();
        let inner_type = read_string(&mut data)?;
        if inner_type != type_name.as_bytes() {
            return Err(KeyError::Malformed("the key type inside the key data does not match"));
        }
        match self.key_type {
            KeyType::Rsa => {
                let e = read_string(&mut data)?;
                let n = read_string(&mut data)?;
                if e.is_empty() || n.len() < 64 {
                    return Err(KeyError::Malformed("RSA key too short"));
                }
            }
            KeyType::Ed25519 => {
                if read_string(&mut data)?.len() != 32 {
                    return Err(KeyError::Malformed("ed25519 key must be 32 bytes"));
                }
            }
        }
        if !data.is_empty() {
            return Err(KeyError::Malformed("trailing bytes after the key"));
        }
        Ok(())
    }

    pub fn type_name(&self) -> &'static str {
        match self.key_type {
            KeyType::Rsa => "ssh-rsa",
            KeyType::Ed25519 => "ssh-ed25519",
        }
    }

    /// `type base64`, without the comment: the form used to compare keys.
    pub fn to_openssh(&self) -> String {
        format!("{} {}", self.type_name(), base64::engine::general_purpose::STANDARD.encode(&self.blob))
    }

    /// The DER-encoded X.509 SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut data = self.blob.as_slice();
        // The blob was validated at parse time, so these reads cannot fail.
        let _ = read_string(&mut data);
        match self.key_type {
            KeyType::Rsa => {
                let e = read_string(&mut data).unwrap_or_default();
                let n = read_string(&mut data).unwrap_or_default();
                let alg = der(
                    0x30,
                    &[der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]), vec![0x05, 0x00]].concat(),
                );
                let rsa_key = der(0x30, &[der_integer(n), der_integer(e)].concat());
                let mut bits = vec![0u8];
                bits.extend_from_slice(&rsa_key);
                der(0x30, &[alg, der(0x03, &bits)].concat())
            }
            KeyType::Ed25519 => {
                let raw = read_string(&mut data).unwrap_or_default();
                let alg = der(0x30, &der(0x06, &[0x2b, 0x65, 0x70]));
                let mut bits = vec![0u8];
                bits.extend_from_slice(raw);
                der(0x30, &[alg, der(0x03, &bits)].concat())
            }
        }
    }

    /// The fingerprint EC2 shows for this key when it was imported.
    pub fn ec2_fingerprint(&self) -> String {
        match self.key_type {
            KeyType::Rsa => colon_hex(&Md5::digest(self.spki_der())),
            KeyType::Ed25519 => base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&self.blob)),
        }
    }

    /// The fingerprint as `ssh-keygen -l` prints it (`SHA256:...`).
    pub fn openssh_fingerprint(&self) -> String {
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&self.blob)))
    }

    /// True if `fingerprint` (as reported by an EC2 endpoint) belongs to this key.
    pub fn matches_fingerprint(&self, fingerprint: &str) -> bool {
        let fp = fingerprint.trim();
        let sha_blob = Sha256::digest(&self.blob);
        let candidates = [
            self.ec2_fingerprint(),
            colon_hex(&Md5::digest(self.spki_der())),
            colon_hex(&Sha256::digest(self.spki_der())),
            base64::engine::general_purpose::STANDARD.encode(sha_blob),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha_blob),
            self.openssh_fingerprint(),
        ];
        candidates.iter().any(|c| c.eq_ignore_ascii_case(fp) || c == fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with ssh-keygen; expected values computed independently with
    // `ssh-keygen -e -m PKCS8 | openssl pkey -pubin -outform DER | openssl md5 -c`,
    // `ssh-keygen -l`, and Python's cryptography package.
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCJ/uAzau/NwtVGn2j91IkM+oOeoOQ3YibGeyu0PYSvg4X0tmVc4yKKAvFPkrRLV0N9K4+kGpfQcQ1L8efakN+lC+0xO7VB1vpx5iG8lmmi6BAWfUAUMnmOpSAS2W80u6q8lvyXKUiGtMSRx6Ok57QAVsVsWFv/Sdin+mVZqqqhRBxoUQrjqkU7Jti5r1tZxSCNPH4zKxTIi10EWevde2iTYYZQ7W0aWXPXKcIYXfvffkVECbn1PakZYUFNsPxB7FcVPEawHoG34BNZ+9iFA+UPgsTGP08Af6DL84iSwz345zoqGhjA6aD+27IXB8DUJy0pOp20ROh9WMO3Q1hTV25B alice@laptop";
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKyfQohiwzQo5mb9ynx0GAr7xoYSkYSy+eDZ8g2i9ke bob@desk";

    #[test]
    fn rsa_fingerprint_matches_openssl() {
        let k = PublicKey::parse_line(RSA).unwrap();
        assert_eq!(k.key_type, KeyType::Rsa);
        assert_eq!(k.comment, "alice@laptop");
        assert_eq!(k.ec2_fingerprint(), "ae:08:6b:49:be:33:71:ab:d2:f6:2b:0a:60:08:17:24");
        assert!(k.matches_fingerprint("ae:08:6b:49:be:33:71:ab:d2:f6:2b:0a:60:08:17:24"));
        // ssh-keygen's MD5 of the blob is a different thing and must not match.
        assert!(!k.matches_fingerprint("35:31:2b:5b:f5:b6:15:9f:f2:94:33:8c:ae:0d:88:55"));
    }

    #[test]
    fn ed25519_fingerprints() {
        let k = PublicKey::parse_line(ED).unwrap();
        assert_eq!(k.key_type, KeyType::Ed25519);
        assert_eq!(k.openssh_fingerprint(), "SHA256:L3gVoN7W9qgl+v0zNTJ1ICSB4FqHaTtIaPLrIL0KfyQ");
        assert_eq!(k.ec2_fingerprint(), "L3gVoN7W9qgl+v0zNTJ1ICSB4FqHaTtIaPLrIL0KfyQ=");
        let moto = "2d:d2:ea:81:59:5c:ff:81:8e:a8:2a:d6:2f:c2:f1:4a:37:04:f5:47:b8:6f:66:4c:e1:e5:22:a0:77:43:25:a6";
        assert!(k.matches_fingerprint(moto));
        assert!(!PublicKey::parse_line(RSA).unwrap().matches_fingerprint(moto));
    }

    #[test]
    fn bad_keys_are_rejected_with_reasons() {
        assert_eq!(PublicKey::parse_file("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"), Err(KeyError::PrivateKey));
        assert!(matches!(PublicKey::parse_line("ecdsa-sha2-nistp256 AAAA x"), Err(KeyError::UnsupportedType(_))));
        assert!(matches!(PublicKey::parse_line("ssh-rsa !!!"), Err(KeyError::Malformed(_))));
        assert!(matches!(PublicKey::parse_line("hello world"), Err(KeyError::Malformed(_))));
        // Type inside the blob must match the declared type.
        let swapped = ED.replace("ssh-ed25519", "ssh-rsa");
        assert!(matches!(PublicKey::parse_line(&swapped), Err(KeyError::Malformed(_))));
        assert_eq!(PublicKey::parse_file(""), Err(KeyError::NotExactlyOne(0)));
        assert_eq!(PublicKey::parse_file(&format!("{RSA}\n{ED}\n")), Err(KeyError::NotExactlyOne(2)));
        assert!(PublicKey::parse_file(&format!("# comment\n\n{ED}\n")).is_ok());
    }

    /// The attack of a box on the workstation's known_hosts: its host key tag with a second
    /// line about other hosts, or anything other than `type base64`.
    #[test]
    fn bare_keys_refuse_everything_but_type_and_base64() {
        let ed = ED.trim_end_matches(" bob@desk");
        let rsa = RSA.trim_end_matches(" alice@laptop");
        assert_eq!(PublicKey::parse_bare(ed).unwrap().to_openssh(), ed);
        assert_eq!(PublicKey::parse_bare(rsa).unwrap().key_type, KeyType::Rsa);
        let peer = "AAAAC3NzaC1lZDI1NTE5AAAAIA".to_owned() + &"B".repeat(42);
        for bad in [
            format!("{ed}\n@revoked * ssh-ed25519 {peer}"),
            format!("{ed}\n* ssh-ed25519 {peer}"),
            format!("{ed}\r\n"),
            format!("{ed} bob@desk"),
            format!("{ed} "),
            format!(" {ed}"),
            ed.replacen(' ', "  ", 1),
            ed.replacen(' ', "\t", 1),
            format!("{ed}="),
            "ssh-ed25519".to_owned(),
            String::new(),
            "ecdsa-sha2-nistp256 AAAA".to_owned(),
            format!("ssh-ed25519 {}", "A".repeat(68)),
            ed.replace("ssh-ed25519", "ssh-rsa"),
        ] {
            assert!(
                matches!(PublicKey::parse_bare(&bad), Err(KeyError::Malformed(_) | KeyError::UnsupportedType(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn openssh_form_drops_comment() {
        let k = PublicKey::parse_line(ED).unwrap();
        assert_eq!(k.to_openssh(), ED.trim_end_matches(" bob@desk"));
    }
}
