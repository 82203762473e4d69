//! A step's `when`: a boolean expression over the role's options, variables and `os.*`, checked
//! when the role is loaded (unknown names, a string option used as a boolean) and evaluated when
//! the plan is compiled.
//!
//! ```text
//! expr := and ("or" and)*
//! and  := not ("and" not)*
//! not  := "not" not | atom
//! atom := "(" expr ")" | "true" | "false" | NAME | NAME ("==" | "!=") 'literal'
//! ```
//!
//! A bare `NAME` must be a `bool` option (or a variable whose value is `true` or `false`);
//! anything else is compared with a quoted literal: `scheduler == 'slurm'`, `os.family != 'dnf'`.
//! The retired form `"{{ name }}"` is an error that says to write `name`.
//!
//! Hand-written rather than `minijinja`'s expressions: this grammar is all a role may say, and a
//! name it does not know is an error when the role is loaded, not a false at some later launch.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Const(bool),
    Name(String),
    Compare { name: String, value: String, equal: bool },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Literal(String),
    Open,
    Close,
    Eq,
    Ne,
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(format!("'{c}' must be followed by '=' (use == or !=)"));
                }
                out.push(if c == '=' { Token::Eq } else { Token::Ne });
            }
            '\'' | '"' => {
                chars.next();
                let mut lit = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(ch) => lit.push(ch),
                        None => return Err(format!("unterminated string {c}{lit}")),
                    }
                }
                out.push(Token::Literal(lit));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-' {
                        w.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(w));
            }
            other => return Err(format!("unexpected '{other}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        while self.peek_word("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Token::Open) => {
                let e = self.or()?;
                match self.toks.get(self.pos) {
                    Some(Token::Close) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Token::Word(w)) if w == "true" || w == "false" => Ok(Expr::Const(w == "true")),
            Some(Token::Word(w)) if ["and", "or", "not"].contains(&w.as_str()) => {
                Err(format!("'{w}' where a name was expected"))
            }
            Some(Token::Word(name)) => match self.toks.get(self.pos) {
                Some(op @ (Token::Eq | Token::Ne)) => {
                    let equal = *op == Token::Eq;
                    self.pos += 1;
                    match self.toks.get(self.pos).cloned() {
                        Some(Token::Literal(value)) => {
                            self.pos += 1;
                            Ok(Expr::Compare { name, value, equal })
                        }
                        _ => Err(format!("compare {name} with a quoted value, e.g. {name} == 'x'")),
                    }
                }
                _ => Ok(Expr::Name(name)),
            },
            Some(Token::Literal(l)) => Err(format!("a quoted value ('{l}') must follow a name and == or !=")),
            Some(Token::Close) => Err("unexpected ')'".into()),
            Some(Token::Eq | Token::Ne) => Err("== or != must follow a name".into()),
            None => Err("the expression ends too early".into()),
        }
    }
}

/// Parses a `when` expression.
pub fn parse(s: &str) -> Result<Expr, String> {
    let trimmed = s.trim();
    // The retired template form says what to write instead.
    if let Some(inner) = trimmed.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        if !inner.contains("{{") && !inner.contains('|') {
            return Err(format!("`when = {s:?}` is the old template form: write `when = {:?}`", inner.trim()));
        }
    }
    if trimmed.contains("{{") {
        return Err(format!("`when = {s:?}`: write an expression (e.g. `hdfs and not small`), not a template"));
    }
    let source = trimmed;
    let mut p = Parser { toks: tokens(source).map_err(|e| format!("`when = {s:?}`: {e}"))?, pos: 0 };
    if p.toks.is_empty() {
        return Err("`when` is empty".into());
    }
    let e = p.or().map_err(|e| format!("`when = {s:?}`: {e}"))?;
    if p.pos != p.toks.len() {
        return Err(format!("`when = {s:?}`: unexpected text after the expression"));
    }
    Ok(e)
}

/// What a name in an expression may be: a `bool` name can stand alone; others only be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Text,
}

impl Expr {
    /// Checks that every name is known (`kinds`) and that only booleans stand alone.
    pub fn check(&self, kinds: &BTreeMap<String, Kind>) -> Result<(), String> {
        let known = |n: &str| {
            kinds
                .get(n)
                .copied()
                .ok_or_else(|| format!("`when` names '{n}', which is not an option, variable or os.* of the role"))
        };
        match self {
            Expr::Const(_) => Ok(()),
            Expr::Name(n) => match known(n)? {
                Kind::Bool => Ok(()),
                Kind::Text => Err(format!("`when` uses '{n}' as a boolean, but it is not one; compare it: {n} == '…'")),
            },
            Expr::Compare { name, .. } => known(name).map(|_| ()),
            Expr::Not(e) => e.check(kinds),
            Expr::And(a, b) | Expr::Or(a, b) => a.check(kinds).and_then(|_| b.check(kinds)),
        }
    }

    /// The expression's value for these variables (`true`/`false` for booleans).
    pub fn eval(&self, vars: &BTreeMap<String, String>) -> Result<bool, String> {
        let get = |n: &str| vars.get(n).ok_or_else(|| format!("`when`: no value for '{n}'"));
        Ok(match self {
            Expr::Const(b) => *b,
            Expr::Name(n) => match get(n)?.as_str() {
                "true" => true,
                "false" => false,
                other => return Err(format!("`when`: '{n}' is '{other}', not true or false")),
            },
            Expr::Compare { name, value, equal } => (get(name)? == value) == *equal,
            Expr::Not(e) => !e.eval(vars)?,
            Expr::And(a, b) => a.eval(vars)? && b.eval(vars)?,
            Expr::Or(a, b) => a.eval(vars)? || b.eval(vars)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_and_evaluates_with_precedence() {
        let v = vars(&[("hdfs", "true"), ("small", "false"), ("scheduler", "slurm"), ("os.family", "apt")]);
        let t = |s: &str| parse(s).unwrap().eval(&v).unwrap();
        assert!(t("hdfs"));
        assert!(!t("not hdfs"));
        assert!(t("hdfs and not small"));
        assert!(t("small or hdfs and scheduler == 'slurm'"), "and binds tighter than or");
        assert!(!t("(small or hdfs) and scheduler != \"slurm\""));
        assert!(t("os.family == 'apt' and true"));
        assert!(!t("not (hdfs or false)"));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (s, says) in [
            ("hdfs and", "ends too early"),
            ("hdfs = 'x'", "use == or !="),
            ("scheduler == slurm", "quoted value"),
            ("(hdfs", "missing ')'"),
            ("hdfs hdfs", "unexpected text"),
            ("'x'", "must follow a name"),
            ("{{ hdfs }} and x", "not a template"),
            ("{{ hdfs }}", "the old template form: write `when = \"hdfs\"`"),
            ("hdfs == 'x", "unterminated"),
            ("", "empty"),
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.contains(says), "{s:?}: {e}");
        }
    }

    #[test]
    fn names_are_checked_against_their_kinds() {
        let kinds: BTreeMap<String, Kind> =
            [("hdfs".to_owned(), Kind::Bool), ("scheduler".to_owned(), Kind::Text)].into_iter().collect();
        assert!(parse("hdfs and scheduler == 'x'").unwrap().check(&kinds).is_ok());
        assert!(parse("scheduler").unwrap().check(&kinds).unwrap_err().contains("compare it"));
        assert!(parse("not hfds").unwrap().check(&kinds).unwrap_err().contains("'hfds'"));
        let v = vars(&[("hdfs", "maybe")]);
        assert!(parse("hdfs").unwrap().eval(&v).unwrap_err().contains("not true or false"));
    }
}
