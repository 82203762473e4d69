//! Shell-style globs for key-pair names: `*` matches within a `/`-separated segment, `**`
//! across segments, `?` one character, `[seq]` and `[!seq]` character sets.

/// True if `name` matches `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_at(&p, &n)
}

/// True if the pattern contains glob metacharacters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

fn matches_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => {
            let double = p.get(1) == Some(&'*');
            let rest = if double { &p[2..] } else { &p[1..] };
            for i in 0..=n.len() {
                if matches_at(rest, &n[i..]) {
                    return true;
                }
                if i < n.len() && !double && n[i] == '/' {
                    return false;
                }
            }
            false
        }
        Some('?') => !n.is_empty() && n[0] != '/' && matches_at(&p[1..], &n[1..]),
        Some('[') => match parse_class(&p[1..]) {
            Some((set, negated, consumed)) => {
                let Some(&c) = n.first() else { return false };
                let hit = set.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                hit != negated && matches_at(&p[1 + consumed..], &n[1..])
            }
            // An unclosed '[' is a literal.
            None => n.first() == Some(&'[') && matches_at(&p[1..], &n[1..]),
        },
        Some(&c) => n.first() == Some(&c) && matches_at(&p[1..], &n[1..]),
    }
}

/// Parses a character class after '['; returns the ranges, negation and chars consumed
/// including the closing ']'.
/// A parsed `[...]` class: inclusive ranges, negation, and the chars consumed.
type Class = (Vec<(char, char)>, bool, usize);

fn parse_class(p: &[char]) -> Option<Class> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let start = i;
    while i < p.len() {
        if p[i] == ']' && i > start {
            return Some((ranges, negated, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            ranges.push((p[i], p[i + 2]));
            i += 3;
        } else {
            ranges.push((p[i], p[i]));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
