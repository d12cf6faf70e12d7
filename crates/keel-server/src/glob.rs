//! Redis glob patterns (KEYS, SCAN MATCH, CONFIG GET): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
//!
//! Unlike Redis's recursive matcher, this one backtracks only to the last `*`, so its cost is
//! at most pattern length × string length whatever the pattern (no exponential blow-up).

/// Matches a `[...]` class at `p[pi]` against `c`: (matched, index after the class). An
/// unterminated class ends at the end of the pattern, as in Redis.
fn class(p: &[u8], mut pi: usize, c: u8) -> (bool, usize) {
    pi += 1;
    let negate = p.get(pi) == Some(&b'^');
    if negate {
        pi += 1;
    }
    let mut matched = false;
    while pi < p.len() && p[pi] != b']' {
        if p[pi] == b'\\' && pi + 1 < p.len() {
            pi += 1;
            matched |= p[pi] == c;
        } else if pi + 2 < p.len() && p[pi + 1] == b'-' && p[pi + 2] != b']' {
            let (a, b) = (p[pi].min(p[pi + 2]), p[pi].max(p[pi + 2]));
            matched |= (a..=b).contains(&c);
            pi += 2;
        } else {
            matched |= p[pi] == c;
        }
        pi += 1;
    }
    // Past the ']' (or at the end of an unterminated class).
    (matched != negate, (pi + 1).min(p.len()))
}

/// Whether `s` matches the glob pattern `p`.
pub fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Where to resume after the last '*': (pattern index after it, string index it covers to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    if pi == p.len() {
                        return true;
                    }
                    star = Some((pi, si));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    let (ok, next) = class(p, pi, s[si]);
                    if ok {
                        pi = next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The literal prefix every match starts with (up to the first special character).
pub fn literal_prefix(p: &[u8]) -> &[u8] {
    let end = p
        .iter()
        .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(p.len());
    &p[..end]
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_examples() {
        let t = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes());
        assert!(t("h?llo", "hello") && t("h?llo", "hallo") && !t("h?llo", "hllo"));
        assert!(t("h*llo", "hllo") && t("h*llo", "heeeello"));
        assert!(t("h[ae]llo", "hello") && t("h[ae]llo", "hallo") && !t("h[ae]llo", "hillo"));
        assert!(t("h[^e]llo", "hallo") && !t("h[^e]llo", "hello"));
        assert!(t("h[a-b]llo", "hbllo") && !t("h[a-b]llo", "hcllo"));
        assert!(t("h[b-a]llo", "hallo"));
        assert!(t("*", "") && t("*", "anything") && !t("", "x") && t("", ""));
        assert!(t("a\\*b", "a*b") && !t("a\\*b", "axb"));
        assert!(t("*a*b*c*", "xxaxxbxxcxx") && !t("*a*b*c*", "xxaxxcxxbxx"));
        assert!(t("user:*:name", "user:42:name") && !t("user:*:name", "user:42:names"));
        assert!(t("x\\", "x\\"));
        assert!(t("[abc", "a"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let p = "*a".repeat(50) + "b";
        let s = "a".repeat(5000);
        assert!(!matches(p.as_bytes(), s.as_bytes()));
    }
}
