//! Facts about the box and its cluster, known only on the box at apply time. They fill the
//! `{{ box.* }}` and `{{ cluster.* }}` placeholders of templates and decide which cluster
//! steps run (`cluster.role` is `leader`, `worker` or `none`).

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub vars: BTreeMap<String, String>,
}

impl Facts {
    /// Reads `{"box": {...}, "cluster": {...}}`; values become `box.NAME` and `cluster.NAME`
    /// (arrays are joined with newlines).
    pub fn load(path: &Path) -> Result<Facts, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Facts, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let mut vars = BTreeMap::new();
        for scope in ["box", "cluster"] {
            if let Some(obj) = v.get(scope).and_then(|s| s.as_object()) {
                for (k, val) in obj {
                    let s = match val {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Array(a) => a
                            .iter()
                            .map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string()))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    vars.insert(format!("{scope}.{k}"), s);
                }
            }
        }
        Ok(Facts { vars })
    }

    /// `leader`, `worker` or `none`.
    pub fn cluster_role(&self) -> &str {
        self.vars.get("cluster.role").map(String::as_str).unwrap_or("none")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes_and_lists() {
        let f = Facts::parse(
            r#"{"box":{"private_ip":"10.0.0.5","ordinal":3},"cluster":{"role":"worker","workers":["a","b"]}}"#,
        )
        .unwrap();
        assert_eq!(f.vars["box.private_ip"], "10.0.0.5");
        assert_eq!(f.vars["box.ordinal"], "3");
        assert_eq!(f.vars["cluster.workers"], "a\nb");
        assert_eq!(f.cluster_role(), "worker");
        assert_eq!(Facts::default().cluster_role(), "none");
        assert!(Facts::parse("nope").is_err());
    }
}
