//! Flower's task search language (`/api/tasks?search=`): terms (substrings of at least three
//! characters, in any field or in one: `name:`, `worker:`, `args:`, `kwargs:`, `result:`),
//! exact `state:` and `kwargs:key=value` terms, juxtaposition or `AND`, `OR`, parentheses,
//! quotes; Flower's limits and error messages, word for word.

use serde_json::{Map, Value as Json};

const MAX_LENGTH: usize = 2048;
const MAX_TOKENS: usize = 128;
const MAX_DEPTH: usize = 5;
const MIN_SUBSTRING: usize = 3;
const FIELDS: [&str; 6] = ["name", "state", "worker", "args", "kwargs", "result"];

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Everything (the empty query).
    All,
    /// One term: its field (`None`: any) and value.
    Term(Option<&'static str>, String),
    /// All of these.
    And(Vec<Query>),
    /// Any of these.
    Or(Vec<Query>),
}

/// A query error, worded as Flower's (`... at position N.`).
fn fail(message: &str, position: Option<usize>) -> String {
    match position {
        Some(p) => format!("{message} at position {p}."),
        None => format!("{message}."),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Open,
    Close,
    And,
    Or,
    Term,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    value: String,
    position: usize,
}

/// Python's `str.isspace`, near enough (Rust's whitespace plus the separators \x1c-\x1f).
fn space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn tokenize(query: &[char]) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let push = |tokens: &mut Vec<Token>, token: Token| {
        tokens.push(token);
        if tokens.len() > MAX_TOKENS {
            return Err(fail(&format!("Query exceeds {MAX_TOKENS} tokens"), None));
        }
        Ok(())
    };
    let mut i = 0;
    while i < query.len() {
        let c = query[i];
        if space(c) {
            i += 1;
            continue;
        }
        let position = i;
        if c == '(' || c == ')' {
            let kind = if c == '(' { Kind::Open } else { Kind::Close };
            push(
                &mut tokens,
                Token {
                    kind,
                    value: c.to_string(),
                    position,
                },
            )?;
            i += 1;
            continue;
        }
        let (mut value, mut quoted, mut in_quote) = (String::new(), false, false);
        while i < query.len() {
            let c = query[i];
            if c == '\\' && i + 1 < query.len() && matches!(query[i + 1], '"' | '\\') {
                value.push(query[i + 1]);
                i += 2;
                continue;
            }
            if c == '"' {
                quoted = true;
                in_quote = !in_quote;
                i += 1;
                continue;
            }
            if !in_quote && (space(c) || c == '(' || c == ')') {
                break;
            }
            value.push(c);
            i += 1;
        }
        if in_quote {
            return Err(fail("Unterminated quoted phrase", Some(position)));
        }
        if value.is_empty() {
            return Err(fail("Empty search term", Some(position)));
        }
        let kind = match (quoted, value.as_str()) {
            (false, "AND") => Kind::And,
            (false, "OR") => Kind::Or,
            (false, "NOT") => return Err(fail("NOT is not supported", Some(position))),
            _ => Kind::Term,
        };
        push(
            &mut tokens,
            Token {
                kind,
                value,
                position,
            },
        )?;
    }
    tokens.push(Token {
        kind: Kind::End,
        value: String::new(),
        position: query.len(),
    });
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

/// Python's `repr` of a token value in an error (`')'`).
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Parser {
    fn current(&self) -> &Token {
        // The tokens end with End, which the parser never passes.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.current().clone();
        self.at += 1;
        token
    }

    fn parse(&mut self) -> Result<Query, String> {
        if self.current().kind == Kind::End {
            return Ok(Query::All);
        }
        let query = self.or(0)?;
        if self.current().kind != Kind::End {
            let t = self.current();
            return Err(fail(
                &format!("Unexpected {}", quoted(&t.value)),
                Some(t.position),
            ));
        }
        Ok(query)
    }

    fn or(&mut self, depth: usize) -> Result<Query, String> {
        let mut children = vec![self.and(depth)?];
        while self.current().kind == Kind::Or {
            let operator = self.advance();
            if matches!(
                self.current().kind,
                Kind::End | Kind::Close | Kind::And | Kind::Or
            ) {
                return Err(fail(
                    "OR must be followed by a search term",
                    Some(operator.position),
                ));
            }
            children.push(self.and(depth)?);
        }
        Ok(combine(children, true))
    }

    fn and(&mut self, depth: usize) -> Result<Query, String> {
        let mut children = vec![self.primary(depth)?];
        while !matches!(self.current().kind, Kind::End | Kind::Close | Kind::Or) {
            if self.current().kind == Kind::And {
                let operator = self.advance();
                if matches!(
                    self.current().kind,
                    Kind::End | Kind::Close | Kind::And | Kind::Or
                ) {
                    return Err(fail(
                        "AND must be followed by a search term",
                        Some(operator.position),
                    ));
                }
            }
            children.push(self.primary(depth)?);
        }
        Ok(combine(children, false))
    }

    fn primary(&mut self, depth: usize) -> Result<Query, String> {
        let token = self.current().clone();
        if token.kind == Kind::Open {
            if depth >= MAX_DEPTH {
                return Err(fail(
                    &format!("Query nesting exceeds {MAX_DEPTH} levels"),
                    Some(token.position),
                ));
            }
            self.advance();
            if self.current().kind == Kind::Close {
                return Err(fail("Empty group", Some(token.position)));
            }
            let inner = self.or(depth + 1)?;
            if self.current().kind != Kind::Close {
                return Err(fail("Missing closing parenthesis", Some(token.position)));
            }
            self.advance();
            return Ok(inner);
        }
        if token.kind != Kind::Term {
            return Err(fail("Expected a search term", Some(token.position)));
        }
        self.advance();
        term(&token)
    }
}

fn combine(children: Vec<Query>, or: bool) -> Query {
    let mut flat: Vec<Query> = Vec::new();
    for child in children {
        let inner = match child {
            Query::Or(c) if or => c,
            Query::And(c) if !or => c,
            other => vec![other],
        };
        for q in inner {
            if !flat.contains(&q) {
                flat.push(q);
            }
        }
    }
    match (flat.len(), or) {
        (1, _) => flat.remove(0),
        (_, true) => Query::Or(flat),
        (_, false) => Query::And(flat),
    }
}

fn term(token: &Token) -> Result<Query, String> {
    let mut field = None;
    let mut value = token.value.as_str();
    if let Some((prefix, rest)) = value.split_once(':') {
        let prefix = fold(prefix);
        if let Some(known) = FIELDS.iter().find(|f| **f == prefix) {
            field = Some(*known);
            value = rest;
        }
    }
    if field.is_none() && value.starts_with('-') {
        return Err(fail(
            "Negation with '-' is not supported",
            Some(token.position),
        ));
    }
    if value.is_empty() {
        return Err(fail(
            "Search qualifier requires a value",
            Some(token.position),
        ));
    }
    let exact = field == Some("state") || (field == Some("kwargs") && value.contains('='));
    if !exact && value.trim().chars().count() < MIN_SUBSTRING {
        return Err(fail(
            &format!("Substring search terms must contain at least {MIN_SUBSTRING} characters"),
            Some(token.position),
        ));
    }
    Ok(Query::Term(field, value.to_owned()))
}

/// Case folded as Flower compares (Python's `casefold`, near enough).
fn fold(text: &str) -> String {
    text.to_lowercase()
}

/// Parses a `search` argument as Flower does (control characters become spaces, the ends are
/// trimmed); the error is Flower's text.
pub fn parse(raw: &str) -> Result<Query, String> {
    let cleaned: String = raw
        .chars()
        .map(|c| match c {
            '\u{0}'..='\u{8}' | '\u{e}'..='\u{1f}' => ' ',
            c => c,
        })
        .collect();
    let chars: Vec<char> = cleaned.trim_matches(space).chars().collect();
    if chars.len() > MAX_LENGTH {
        return Err(fail(
            &format!("Query exceeds {MAX_LENGTH} characters"),
            None,
        ));
    }
    let tokens = tokenize(&chars)?;
    Parser { tokens, at: 0 }.parse()
}

/// What a task offers the search: its fields folded, and its kwargs as `key=value` pairs.
#[derive(Debug)]
pub struct Document {
    fields: [String; 7],
    kwargs_pairs: Vec<String>,
}

impl Document {
    /// From a task's fields (`uuid`, `name`, `state`, `worker`, `args`, `kwargs`, `result`).
    pub fn of(task: &Map<String, Json>) -> Document {
        let text = |key: &str| match task.get(key) {
            None | Some(Json::Null) => String::new(),
            Some(Json::String(s)) => fold(s),
            Some(other) => fold(&other.to_string()),
        };
        let kwargs_pairs = match task.get("kwargs") {
            Some(Json::String(repr)) => kwargs_pairs(repr),
            _ => Vec::new(),
        };
        Document {
            fields: [
                "uuid", "name", "state", "worker", "args", "kwargs", "result",
            ]
            .map(text),
            kwargs_pairs,
        }
    }

    fn field(&self, name: &str) -> &str {
        let index = match name {
            "name" => 1,
            "state" => 2,
            "worker" => 3,
            "args" => 4,
            "kwargs" => 5,
            _ => 6,
        };
        &self.fields[index]
    }
}

impl Query {
    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Document) -> bool {
        match self {
            Query::All => true,
            Query::And(all) => all.iter().all(|q| q.matches(doc)),
            Query::Or(any) => any.iter().any(|q| q.matches(doc)),
            Query::Term(field, value) => {
                let value = fold(value);
                match *field {
                    Some("state") => doc.field("state") == value,
                    Some("kwargs") if value.contains('=') => {
                        let (k, v) = value.split_once('=').unwrap_or((&value, ""));
                        let pair = format!("{}={}", k.trim(), v.trim());
                        doc.kwargs_pairs.contains(&pair)
                    }
                    Some(field) => doc.field(field).contains(&value),
                    None => doc.fields.join("\0").contains(&value),
                }
            }
        }
    }
}

/// The `key=value` pairs of a kwargs repr (`{'a': 1, 'b': 'x'}`), folded: string keys and
/// values by their text, `None` as nothing, others as written (their repr); no pairs when
/// the text is no complete dict literal (a truncated repr).
pub fn kwargs_pairs(repr: &str) -> Vec<String> {
    let chars: Vec<char> = repr.trim().chars().collect();
    let (Some('{'), Some('}')) = (chars.first(), chars.last()) else {
        return Vec::new();
    };
    let body = &chars[1..chars.len() - 1];
    let mut pairs = Vec::new();
    for item in split_top(body, ',') {
        let item: String = item.iter().collect();
        if item.trim().is_empty() {
            continue;
        }
        let item_chars: Vec<char> = item.chars().collect();
        let parts = split_top(&item_chars, ':');
        let [key, value] = parts.as_slice() else {
            return Vec::new();
        };
        let (Some(key), Some(value)) = (literal(key), literal(value)) else {
            return Vec::new();
        };
        pairs.push(format!("{}={}", fold(&key), fold(&value)));
    }
    pairs
}

/// `text` split at `separator` outside quotes and brackets (`None` pieces if unbalanced).
fn split_top(text: &[char], separator: char) -> Vec<&[char]> {
    let (mut depth, mut quote, mut start, mut i) = (0i32, None::<char>, 0, 0);
    let mut out = Vec::new();
    while i < text.len() {
        let c = text[i];
        match quote {
            Some(q) => {
                if c == '\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                c if c == separator && depth == 0 => {
                    out.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    if quote.is_some() || depth != 0 {
        return vec![text, text, text];
    }
    out.push(&text[start..]);
    out
}

/// A literal's text as Flower's search normalises it: a string's content, `None` as empty,
/// anything else as written.
fn literal(text: &[char]) -> Option<String> {
    let text: String = text.iter().collect();
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text == "None" {
        return Some(String::new());
    }
    let mut chars = text.chars();
    let first = chars.next()?;
    if first != '\'' && first != '"' {
        return Some(text.to_owned());
    }
    if !text.ends_with(first) || text.len() < 2 {
        return None;
    }
    let inner: Vec<char> = text[1..text.len() - 1].chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = *inner.get(i + 1)?;
        i += 2;
        let hex = |n: usize, i: &mut usize| -> Option<char> {
            let digits: String = inner.get(*i..*i + n)?.iter().collect();
            *i += n;
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        match next {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'x' => out.push(hex(2, &mut i)?),
            'u' => out.push(hex(4, &mut i)?),
            'U' => out.push(hex(8, &mut i)?),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flowers_errors_word_for_word() {
        for (query, error) in [
            (
                "a",
                "Substring search terms must contain at least 3 characters at position 0.",
            ),
            ("NOT abc", "NOT is not supported at position 0."),
            (
                "abc OR",
                "OR must be followed by a search term at position 4.",
            ),
            (
                "abc AND)",
                "AND must be followed by a search term at position 4.",
            ),
            ("OR abc", "Expected a search term at position 0."),
            ("(abc", "Missing closing parenthesis at position 0."),
            ("()", "Empty group at position 0."),
            ("abc)", "Unexpected ')' at position 3."),
            ("\"abc", "Unterminated quoted phrase at position 0."),
            ("\"\"", "Empty search term at position 0."),
            ("-abc", "Negation with '-' is not supported at position 0."),
            ("name:", "Search qualifier requires a value at position 0."),
            (
                "((((((abc))))))",
                "Query nesting exceeds 5 levels at position 5.",
            ),
        ] {
            assert_eq!(parse(query).err().as_deref(), Some(error), "{query}");
        }
        assert_eq!(
            parse(&"x ".repeat(129)).err().as_deref(),
            Some("Query exceeds 128 tokens.")
        );
        assert_eq!(parse("  ").ok(), Some(Query::All));
    }

    #[test]
    fn terms_match_as_flower() {
        let task: Map<String, Json> = serde_json::from_value(serde_json::json!({
            "uuid": "id-1", "name": "tasks.Add", "state": "SUCCESS", "worker": "w1@h",
            "args": "(2, 3)", "kwargs": "{'user': 'Ann', 'n': 1, 'x': None, 'f': [1, 'a,b']}",
            "result": "5"
        }))
        .unwrap_or_default();
        let doc = Document::of(&task);
        let hit = |q: &str| parse(q).map(|q| q.matches(&doc));
        assert_eq!(hit("add"), Ok(true));
        assert_eq!(hit("name:task"), Ok(true));
        assert_eq!(hit("state:success"), Ok(true));
        assert_eq!(hit("state:succ"), Ok(false), "exact");
        assert_eq!(hit("kwargs:user=ann"), Ok(true));
        assert_eq!(hit("kwargs:n=1 kwargs:x="), Ok(true));
        assert_eq!(
            hit("kwargs:f=[1, 'a,b']"),
            Ok(false),
            "a term ends at a space"
        );
        assert_eq!(hit("\"kwargs:f=[1, 'a,b']\""), Ok(true));
        assert_eq!(
            hit("worker:zz1 OR result:5"),
            Err("Substring search terms must contain at least 3 characters at position 14.".into())
        );
        assert_eq!(hit("(worker:w1@ OR nothing) AND args:\"(2,\""), Ok(true));
        assert_eq!(
            hit("args:(2,"),
            Err("Search qualifier requires a value at position 0.".into()),
            "a parenthesis ends a term"
        );
        assert_eq!(hit("nothing"), Ok(false));
        assert!(kwargs_pairs("{'a': 'trunc...").is_empty());
    }
}
