//! A small YAML writer for generated configuration that people read (Jenkins' configuration
//! as code): block mappings (keys sorted, as `serde_json` keeps them) and sequences, every string
//! double-quoted with JSON's escapes (which YAML's double-quoted scalars share), so that no
//! value can change the document's structure whatever it holds.

use serde_json::Value;

/// `value` as a YAML document (a mapping or sequence at the top).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    block(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(quote(s)),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !k.starts_with('-')
        && !matches!(k, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n");
    if plain {
        k.to_owned()
    } else {
        quote(k)
    }
}

/// Writes a mapping or sequence whose lines start at `indent`.
fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, item) in map {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}{}: {s}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        // Sequences under a key are indented too (what JCasC's own exports do).
                        block(item, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The first line of a nested block goes after the dash.
                        let mut inner = String::new();
                        block(item, indent + 2, &mut inner);
                        let rest = inner.get(indent + 2..).unwrap_or_default();
                        out.push_str(&format!("{pad}- {rest}"));
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_block_yaml() {
        let v = json!({
            "jenkins": {
                "numExecutors": 0,
                "clouds": [{"amazonEC2": {"name": "cgcloud", "templates": [{"a": "x", "tags": [{"name": "k", "value": "v"}]}]}}],
                "empty": [],
            },
            "odd key": "line\nbreak \"quoted\" # not a comment: {}",
            "true": false,
        });
        let text = to_string(&v);
        assert_eq!(
            text,
            r#"jenkins:
  clouds:
    - amazonEC2:
        name: "cgcloud"
        templates:
          - a: "x"
            tags:
              - name: "k"
                value: "v"
  empty: []
  numExecutors: 0
"odd key": "line\nbreak \"quoted\" # not a comment: {}"
"true": false
"#
        );
    }

    #[test]
    fn sequences_of_scalars_and_of_sequences() {
        let v = json!({"a": [1, "two", [3, 4], {"k": [5]}]});
        assert_eq!(to_string(&v), "a:\n  - 1\n  - \"two\"\n  - - 3\n    - 4\n  - k:\n      - 5\n");
    }
}
