//! Pure model and logic of cgcloud, with no I/O: namespaces and the names derived from them,
//! the tag schema, box selection, cluster ordinals, key parsing and fingerprints, globs, zones.

pub mod d32;
pub mod glob;
pub mod keypairs;
pub mod model;
pub mod namespace;
pub mod ordinals;
pub mod plan;
pub mod sshkey;
pub mod tags;
pub mod zone;

pub use namespace::Namespace;
