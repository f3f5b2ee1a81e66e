//! Components write `?` placeholders on every dialect; PostgreSQL wants
//! `$1, $2, …`. The rewrite skips quoted text and comments, so a `?` inside
//! a string literal stays a character.

use std::borrow::Cow;

/// `statement` with each `?` outside quotes and comments replaced by `$n`.
pub fn numbered(statement: &str) -> Cow<'_, str> {
    if !statement.contains('?') {
        return Cow::Borrowed(statement);
    }
    let mut out = String::with_capacity(statement.len() + 8);
    let mut n = 0;
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            // '…' and "…": a doubled quote inside is an escaped quote, which
            // the loop handles as closing then reopening.
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut previous = '\0';
                for d in chars.by_ref() {
                    out.push(d);
                    if previous == '*' && d == '/' {
                        break;
                    }
                    previous = d;
                }
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn numbers_placeholders_in_order() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND c < ? LIMIT ?"),
            "SELECT a FROM t WHERE b = $1 AND c < $2 LIMIT $3"
        );
    }

    #[test]
    fn leaves_quoted_text_and_comments_alone() {
        assert_eq!(
            numbered("SELECT '?', 'it''s ?', \"odd?\" -- why?\n, ? /* ? */ FROM t WHERE x = ?"),
            "SELECT '?', 'it''s ?', \"odd?\" -- why?\n, $1 /* ? */ FROM t WHERE x = $2"
        );
    }

    #[test]
    fn statements_without_placeholders_are_untouched() {
        assert!(matches!(numbered("SELECT 1"), std::borrow::Cow::Borrowed(_)));
    }
}
