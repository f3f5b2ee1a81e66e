//! Finding a statement's `?` placeholders. Components write `?` on every
//! dialect; PostgreSQL wants `$1, $2, …`, and a batch on a database server
//! (`batch.rs`) puts each parameter's literal in its place. The scan skips
//! quoted text and comments, so a `?` inside a string literal stays a
//! character, and it notices a `;` that would start a second statement.

use std::borrow::Cow;

/// How a dialect quotes and comments, as far as finding placeholders goes.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// `\` escapes the next character inside quotes (MariaDB's default
    /// `sql_mode`; standard SQL doubles the quote instead).
    backslash_escapes: bool,
    /// `` `name` `` quotes an identifier.
    backtick_identifiers: bool,
    /// `#` starts a comment to the end of the line, and `--` does only when
    /// followed by a space or a control character.
    mysql_comments: bool,
}

/// SQLite and PostgreSQL (standard strings).
pub const STANDARD: Syntax =
    Syntax { backslash_escapes: false, backtick_identifiers: false, mysql_comments: false };
/// MariaDB / MySQL in their default `sql_mode`.
pub const MYSQL: Syntax =
    Syntax { backslash_escapes: true, backtick_identifiers: true, mysql_comments: true };

/// A statement cut at its placeholders.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    /// The text around the placeholders: one more piece than placeholders.
    pub pieces: Vec<&'a str>,
    /// A `;` outside quotes and comments is followed by more than
    /// whitespace: the text holds more than one statement. (A trailing `;`
    /// is dropped from the last piece.)
    pub several_statements: bool,
}

impl Split<'_> {
    pub fn placeholders(&self) -> usize {
        self.pieces.len() - 1
    }
}

/// Cuts `statement` at each `?` outside quotes and comments.
pub fn split(statement: &str, syntax: Syntax) -> Split<'_> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let scanned = scan(statement, syntax, |at| {
        pieces.push(&statement[start..at]);
        start = at + 1;
    });
    pieces.push(&statement[start..scanned.end]);
    Split { pieces, several_statements: scanned.several_statements }
}

/// Whether a `;` outside quotes and comments starts a second statement.
pub fn several_statements(statement: &str, syntax: Syntax) -> bool {
    scan(statement, syntax, |_| {}).several_statements
}

/// What a [`scan`] found besides the placeholders.
struct Scanned {
    /// Where the statement ends: before a trailing `;`, else its length.
    end: usize,
    several_statements: bool,
}

/// Walks `statement`, calling `placeholder` with the byte index of each
/// `?` outside quotes and comments. Every byte compared is ASCII, so each
/// index is a char boundary.
fn scan(statement: &str, syntax: Syntax, mut placeholder: impl FnMut(usize)) -> Scanned {
    let bytes = statement.as_bytes();
    let mut several_statements = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'?' => placeholder(i),
            quote @ (b'\'' | b'"') => i = skip_quoted(bytes, i, quote, syntax.backslash_escapes),
            b'`' if syntax.backtick_identifiers => i = skip_quoted(bytes, i, b'`', false),
            b'-' if bytes.get(i + 1) == Some(&b'-')
                && (!syntax.mysql_comments
                    || bytes.get(i + 2).is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control())) =>
            {
                i = skip_line(bytes, i);
            }
            b'#' if syntax.mysql_comments => i = skip_line(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = match statement[i + 2..].find("*/") {
                    Some(at) => i + 2 + at + 1,
                    None => bytes.len(),
                };
            }
            b';' if statement[i + 1..].trim().is_empty() => return Scanned { end: i, several_statements },
            b';' => several_statements = true,
            _ => {}
        }
        i += 1;
    }
    Scanned { end: bytes.len(), several_statements }
}

/// The index of the quote that closes the one at `open` (or the end).
fn skip_quoted(bytes: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash_escapes => i += 1,
            // A doubled quote is an escaped quote: the caller sees it as
            // closing then reopening.
            c if c == quote => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The index of the newline ending the comment at `from` (or the end).
fn skip_line(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |at| from + at)
}

/// `statement` with each `?` outside quotes and comments replaced by `$n`
/// (PostgreSQL).
pub fn numbered(statement: &str) -> Cow<'_, str> {
    if !statement.contains('?') {
        return Cow::Borrowed(statement);
    }
    let mut out = String::with_capacity(statement.len() + 8);
    let (mut start, mut n) = (0, 0);
    scan(statement, STANDARD, |at| {
        n += 1;
        out.push_str(&statement[start..at]);
        out.push('$');
        out.push_str(&n.to_string());
        start = at + 1;
    });
    out.push_str(&statement[start..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn mysql_backslashes_escape_quotes() {
        let sql = r"SELECT 'it\'s ?', `odd?`, ? # why?
            FROM t WHERE a = ?";
        assert_eq!(split(sql, MYSQL).placeholders(), 2);
        // Standard strings: the backslash is a character and the quote
        // after it closes the literal, so the `?` after it counts.
        assert_eq!(split(r"SELECT 'a\', ?", STANDARD).placeholders(), 1);
        assert_eq!(split(r"SELECT 'a\', ?'", MYSQL).placeholders(), 0);
    }

    #[test]
    fn mysql_double_dash_needs_a_space_to_be_a_comment() {
        assert_eq!(split("SELECT 1--?\n", MYSQL).placeholders(), 1);
        assert_eq!(split("SELECT 1-- ?\n, ?", MYSQL).placeholders(), 1);
        assert_eq!(split("SELECT 1--?\n, ?", STANDARD).placeholders(), 1);
    }

    #[test]
    fn a_second_statement_is_noticed_and_a_trailing_semicolon_dropped() {
        let one = split("INSERT INTO t VALUES (?, ';') ;  \n", STANDARD);
        assert_eq!(
            one,
            Split { pieces: vec!["INSERT INTO t VALUES (", ", ';') "], several_statements: false }
        );
        assert!(split("INSERT INTO t VALUES (1); DELETE FROM t", STANDARD).several_statements);
        assert!(split("SELECT 1 -- ;\n; SELECT 2", MYSQL).several_statements);
        assert!(!split("SELECT ';' /* ; */ -- ;", MYSQL).several_statements);
    }

    #[test]
    fn unterminated_quotes_and_comments_end_at_the_end() {
        assert_eq!(split("SELECT 'abc ?", STANDARD).placeholders(), 0);
        assert_eq!(split("SELECT ? /* ?", STANDARD).placeholders(), 1);
    }
}
