//! Shell-style globs for key-pair and role names: `*` matches within a `/`-separated segment,
//! `**` across segments, `?` one character, `[seq]` and `[!seq]` character sets. Matching is
//! `globset`'s (compiled to an automaton, so a pattern with many stars costs linear time, which
//! the backtracking matcher this replaced did not); braces and backslashes are literal, as they
//! were, and a pattern `globset` cannot read (an unclosed `[`) matches only itself.

use globset::GlobBuilder;

/// A pattern compiled once, to match many names.
pub enum Glob {
    Compiled(globset::GlobMatcher),
    /// A pattern `globset` cannot read: it matches only itself.
    Literal(String),
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let escaped = pattern.replace('\\', "\\\\").replace('{', "\\{").replace('}', "\\}");
        match GlobBuilder::new(&escaped).literal_separator(true).backslash_escape(true).build() {
            Ok(glob) => Glob::Compiled(glob.compile_matcher()),
            Err(_) => Glob::Literal(pattern.to_owned()),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Glob::Compiled(m) => m.is_match(name),
            Glob::Literal(l) => l == name,
        }
    }
}

/// True if the pattern contains glob metacharacters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_match(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).matches(name)
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "hannes"));
        assert!(glob_match("han*", "hannes"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("**", "a/b"));
        assert!(glob_match("a/*", "a/b"));
        assert!(glob_match("?annes", "hannes"));
        assert!(glob_match("[gh]annes", "hannes"));
        assert!(!glob_match("[!h]annes", "hannes"));
        assert!(glob_match("[a-z]*", "x1"));
        assert!(!glob_match("[a-z]*", "X1"));
        assert!(glob_match("a[", "a["));
        assert!(!glob_match("hannes", "Hannes"));
        assert!(glob_match("", ""));
        assert!(is_glob("a*") && is_glob("a?") && is_glob("[ab]") && !is_glob("plain"));
    }

    #[test]
    fn braces_and_backslashes_are_literal() {
        assert!(glob_match("team{1,2}*", "team{1,2}-x"));
        assert!(!glob_match("team{1,2}*", "team1-x"));
        assert!(glob_match("a\\*", "a\\b"));
        assert!(glob_match("jenkins-agent-*", "jenkins-agent-ubuntu-noble"));
        assert!(glob_match("*@laptop", "hannes@laptop"));
        assert!(!glob_match("?", "/"));
    }

    /// The backtracking matcher took exponential time here.
    #[test]
    fn many_stars_cost_little() {
        let pattern = "*a".repeat(30) + "b";
        let name = "a".repeat(200);
        let t = std::time::Instant::now();
        assert!(!glob_match(&pattern, &name));
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
