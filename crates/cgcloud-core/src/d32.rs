//! Compact, sortable encodings of bytes used in generated names: d32 (base32 with an alphabet
//! that sorts like the input) and the 11-character volume label hash.

use base64::Engine as _;
use md5::{Digest as _, Md5};

/// Unpadded base32 with the alphabet `234567a-z`, so encoded strings sort like the bytes.
pub fn d32(bytes: &[u8]) -> String {
    static D32: std::sync::LazyLock<data_encoding::Encoding> = std::sync::LazyLock::new(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("234567abcdefghijklmnopqrstuvwxyz");
        // A constant specification: `d32_vectors` shows it is valid.
        spec.encoding().expect("the d32 alphabet is 32 distinct ASCII symbols")
    });
    D32.encode(bytes)
}

/// A short hash of a volume name that fits in an ext4 label (16 bytes): MD5, the two 64-bit
/// halves XORed, URL-safe base64 without padding.
pub fn volume_label_hash(name: &str) -> String {
    let digest = Md5::digest(name.as_bytes());
    let folded: Vec<u8> = digest[..8].iter().zip(&digest[8..]).map(|(a, b)| a ^ b).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d32_vectors() {
        assert_eq!(d32(b""), "");
        assert_eq!(d32(b"\0"), "22");
        assert_eq!(d32(b"\xff"), "zw");
        assert_eq!(d32(b"\0\x01\x02\x03\x04"), "222k62s6");
        assert_eq!(d32(b"\0\x01\x02\x03\x04\x05"), "222k62s62o");
    }

    #[test]
    fn d32_sorts_like_input() {
        let mut inputs: Vec<Vec<u8>> = (0u32..2000).map(|i| (i * 7919).to_be_bytes().to_vec()).collect();
        let mut encoded: Vec<String> = inputs.iter().map(|i| d32(i)).collect();
        inputs.sort();
        encoded.sort();
        assert_eq!(encoded, inputs.iter().map(|i| d32(i)).collect::<Vec<_>>());
    }

    #[test]
    fn volume_label_vectors() {
        assert_eq!(volume_label_hash("hannes_spark-master__0"), "i0u77fnocoo");
        assert_eq!(volume_label_hash(""), "PZ2FQWP48Ho");
        assert_eq!(volume_label_hash(" "), "oIf03JUELnY");
        assert_eq!(volume_label_hash("1"), "yQYSos_Mpxk");
    }
}
