//! Pure model and logic of cgcloud, with no I/O: namespaces and the names derived from them,
//! the tag schema, box selection, cluster ordinals, elastic clusters' bounds and decisions, key parsing and fingerprints, globs, zones,
//! IAM policies, generated configuration (Jenkins agents, YAML), SigV4 request signing, and the
//! HTTP/1.1 parsing and writing of the local cloud's and the tests' servers (over buffers).

pub mod authorized_keys;
pub mod d32;
pub mod fsutil;
pub mod glob;
pub mod http;
pub mod jenkins;
pub mod keypairs;
pub mod limits;
pub mod members;
pub mod model;
pub mod namespace;
pub mod ordinals;
pub mod plan;
pub mod policy;
pub mod scaling;
pub mod sigv4;
pub mod spot;
pub mod sshkey;
pub mod tags;
pub mod userdata;
pub mod yaml;
pub mod zone;

pub use namespace::Namespace;

/// The SNS topic (one per region) that tells every box's agent to refresh its keys. Key pairs
/// are not namespaced, so neither is the topic: a key change may concern any namespace.
pub const AGENT_TOPIC: &str = "cgcloud-agent-notifications";
