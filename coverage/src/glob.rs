//! Path globs for filtering reports: `drivers/vhost/*`, `drivers/**/vhost*.c`, `include/linux/`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`: one character other than `/`.
    Any,
    /// `*`: any run of characters without `/`.
    Star,
    /// `**`: any run of characters, `/` included.
    DoubleStar,
    /// `**/`: zero or more whole directories.
    Dirs,
}

/// A glob over `/`-separated source paths.
///
/// `*` and `?` stay within one path component, `**` crosses components, `**/` matches zero or
/// more directories, and a pattern ending in `/` matches everything below that directory.
/// The whole path must match: `drivers/vhost/*` matches `drivers/vhost/net.c` but not
/// `drivers/vhost/sub/x.c` (use `drivers/vhost/**` or `drivers/vhost/`).
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob {
    pattern: String,
    tokens: Vec<Token>,
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.pattern)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl PathGlob {
    /// Compiles a pattern (every string is a valid pattern).
    pub fn new(pattern: &str) -> Self {
        let mut tokens = Vec::new();
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    if chars.get(i + 2) == Some(&'/') {
                        tokens.push(Token::Dirs);
                        i += 3;
                    } else {
                        tokens.push(Token::DoubleStar);
                        i += 2;
                    }
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        if pattern.ends_with('/') {
            tokens.push(Token::DoubleStar);
        }
        PathGlob {
            pattern: pattern.to_string(),
            tokens,
        }
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the whole of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        let n = s.len();
        // next[j]: tokens[i+1..] match s[j..]; cur[j]: tokens[i..] match s[j..].
        let mut next = vec![false; n + 1];
        next[n] = true;
        let mut cur = vec![false; n + 1];
        for tok in self.tokens.iter().rev() {
            match tok {
                Token::Char(c) => {
                    cur[n] = false;
                    for j in 0..n {
                        cur[j] = s[j] == *c && next[j + 1];
                    }
                }
                Token::Any => {
                    cur[n] = false;
                    for j in 0..n {
                        cur[j] = s[j] != '/' && next[j + 1];
                    }
                }
                Token::Star => {
                    cur[n] = next[n];
                    for j in (0..n).rev() {
                        cur[j] = next[j] || (s[j] != '/' && cur[j + 1]);
                    }
                }
                Token::DoubleStar => {
                    cur[n] = next[n];
                    for j in (0..n).rev() {
                        cur[j] = next[j] || cur[j + 1];
                    }
                }
                Token::Dirs => {
                    // (any/)? : skip nothing, or up to and including some later '/'.
                    let mut slash_ahead = false;
                    cur[n] = next[n];
                    for j in (0..n).rev() {
                        slash_ahead = slash_ahead || (s[j] == '/' && next[j + 1]);
                        cur[j] = next[j] || slash_ahead;
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        next[0]
    }
}

/// True when `path` matches any of `globs`.
pub fn matches_any(globs: &[PathGlob], path: &str) -> bool {
    globs.iter().any(|g| g.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| PathGlob::new(p).matches(s);
        assert!(g("drivers/vhost/*", "drivers/vhost/net.c"));
        assert!(!g("drivers/vhost/*", "drivers/vhost/sub/x.c"));
        assert!(!g("drivers/vhost/*", "drivers/vhost"));
        assert!(g("drivers/vhost/**", "drivers/vhost/sub/x.c"));
        assert!(g("drivers/vhost/", "drivers/vhost/sub/x.c"));
        assert!(!g("drivers/vhost/", "drivers/vhost-x/a.c"));
        assert!(g("drivers/**/net.c", "drivers/net.c"));
        assert!(g("drivers/**/net.c", "drivers/vhost/net.c"));
        assert!(g("drivers/**/net.c", "drivers/a/b/net.c"));
        assert!(!g("drivers/**/net.c", "drivers/vhost/xnet.c"));
        assert!(g("**/*.h", "include/linux/list.h"));
        assert!(g("**/*.h", "x.h"));
        assert!(g("*.c", "net.c"));
        assert!(!g("*.c", "vhost/net.c"));
        assert!(g("drivers/vhost/v?ock.c", "drivers/vhost/vsock.c"));
        assert!(!g("drivers/vhost/v?ock.c", "drivers/vhost/v/ock.c"));
        assert!(g("drivers/vhost/net.c", "drivers/vhost/net.c"));
        assert!(!g("drivers/vhost/net.c", "drivers/vhost/net.cc"));
        assert!(g("", ""));
        assert!(!g("", "a"));
        assert!(g("**", ""));
        assert!(matches_any(
            &[PathGlob::new("a/*"), PathGlob::new("b/*")],
            "b/x"
        ));
        assert!(!matches_any(&[], "b/x"));
    }
}
