//! Public key files as users give them to `register-key`: any text either parses to one
//! key or is refused, never panics; a parsed key prints back to a line that parses to the
//! same key, with the same fingerprints. Structured inputs make well-formed key data (the
//! SSH wire format) so that the parser's inner checks are reached, not only base64 errors.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use cgcloud_core::sshkey::PublicKey;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    raw: &'a str,
    rsa: bool,
    outer_type: &'a str,
    inner_type: Vec<u8>,
    fields: Vec<Vec<u8>>,
    trailing: Vec<u8>,
    comment: &'a str,
    before: &'a str,
    after: &'a str,
}

fn check(text: &str) {
    let Ok(key) = PublicKey::parse_file(text) else { return };
    let line = key.to_openssh();
    let again = PublicKey::parse_line(&line).expect("a key prints back to a line that parses");
    assert_eq!(again.to_openssh(), line);
    assert_eq!(again.ec2_fingerprint(), key.ec2_fingerprint());
    assert_eq!(again.openssh_fingerprint(), key.openssh_fingerprint());
    assert!(key.matches_fingerprint(&key.ec2_fingerprint()));
    let _ = key.spki_der();
}

fuzz_target!(|input: Input| {
    check(input.raw);
    let mut blob = Vec::new();
    let mut put = |b: &[u8]| {
        blob.extend_from_slice(&(b.len() as u32).to_be_bytes());
        blob.extend_from_slice(b);
    };
    let type_name = if input.rsa { "ssh-rsa" } else { "ssh-ed25519" };
    put(if input.inner_type.is_empty() { type_name.as_bytes() } else { &input.inner_type });
    for f in &input.fields {
        put(f);
    }
    blob.extend_from_slice(&input.trailing);
    let outer = if input.outer_type.is_empty() { type_name } else { input.outer_type };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
    check(&format!("{}{outer} {b64} {}{}", input.before, input.comment, input.after));
});
