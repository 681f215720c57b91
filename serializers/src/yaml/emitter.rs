//! PyYAML's emitter (`yaml/emitter.py`) with `safe_dump`'s settings: block style, width 80,
//! indent 2, the scalar style chosen as PyYAML chooses it.

use super::resolver::resolves_to_non_str;
use super::tree::{Kind, Node, Scalar};

pub(super) const BEST_INDENT: usize = 2;
pub(super) const BEST_WIDTH: usize = 80;

pub(super) fn is_break(ch: char) -> bool {
    matches!(ch, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

pub(super) fn is_blank_or_break(ch: char) -> bool {
    matches!(
        ch,
        '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `Emitter.analyze_scalar` (with `allow_unicode=False`), reduced to what style choice needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Analysis {
    empty: bool,
    multiline: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

pub(super) fn analyze_scalar(scalar: &[char]) -> Analysis {
    if scalar.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    if scalar.starts_with(&['-', '-', '-']) || scalar.starts_with(&['.', '.', '.']) {
        block_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = scalar.get(1).is_none_or(|&c| is_blank_or_break(c));
    let mut previous_space = false;
    let mut previous_break = false;
    let last = scalar.len() - 1;
    for (index, &ch) in scalar.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                block_indicators = true;
            }
            if (ch == '?' || ch == ':') && followed_by_whitespace {
                block_indicators = true;
            }
            if ch == '-' && followed_by_whitespace {
                block_indicators = true;
            }
        } else {
            if ch == ':' && followed_by_whitespace {
                block_indicators = true;
            }
            if ch == '#' && preceded_by_whitespace {
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        // With allow_unicode=False every character outside printable ASCII (and '\n') is
        // special: only double quotes can escape it.
        if !(ch == '\n' || (' '..='~').contains(&ch)) {
            special_characters = true;
        }
        if ch == ' ' {
            if index == 0 {
                leading_space = true;
            }
            if index == last {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            if index == 0 {
                leading_break = true;
            }
            if index == last {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank_or_break(ch);
        followed_by_whitespace = scalar.get(index + 2).is_none_or(|&c| is_blank_or_break(c));
    }
    let mut allow_block_plain = true;
    let mut allow_single_quoted = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        allow_block_plain = false;
    }
    if break_space {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if space_break || special_characters {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if line_breaks || block_indicators {
        allow_block_plain = false;
    }
    Analysis {
        empty: false,
        multiline: line_breaks,
        allow_block_plain,
        allow_single_quoted,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

/// The emitter's state for one document. Collections are block style except empty ones (`{}`,
/// `[]`, PyYAML's flow style); since those have no children, no scalar is ever emitted at a
/// flow level, so the flow-level state is not needed.
pub(super) struct Emitter {
    pub(super) out: String,
    indents: Vec<Option<usize>>,
    indent: Option<usize>,
    column: usize,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
    root_context: bool,
    mapping_context: bool,
    simple_key_context: bool,
}

impl Emitter {
    pub(super) fn new() -> Self {
        Self {
            out: String::with_capacity(128),
            indents: Vec::new(),
            indent: None,
            column: 0,
            whitespace: true,
            indention: true,
            open_ended: false,
            root_context: false,
            mapping_context: false,
            simple_key_context: false,
        }
    }

    /// Stream start, an implicit document start (`safe_dump` writes no `---`), the root node,
    /// the document end, and the stream end (`...` after a plain root scalar).
    pub(super) fn emit_document(&mut self, root: &Node) {
        self.expect_node(root, true, false, false);
        self.write_indent();
        if self.open_ended {
            self.write_indicator("...", true, false, false);
            self.write_indent();
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        match self.indent {
            None => self.indent = Some(if flow { BEST_INDENT } else { 0 }),
            Some(indent) if !indentless => self.indent = Some(indent + BEST_INDENT),
            Some(_) => {}
        }
    }

    fn pop_indent(&mut self) {
        self.indent = self.indents.pop().flatten();
    }

    fn expect_node(&mut self, node: &Node, root: bool, mapping: bool, simple_key: bool) {
        self.root_context = root;
        self.mapping_context = mapping;
        self.simple_key_context = simple_key;
        match node {
            Node::Scalar(s) => self.expect_scalar(s),
            Node::Seq(items) if items.is_empty() => {
                self.write_indicator("[", true, true, false);
                self.write_indicator("]", false, false, false);
            }
            Node::Map(entries) if entries.is_empty() => {
                self.write_indicator("{", true, true, false);
                self.write_indicator("}", false, false, false);
            }
            Node::Seq(items) => {
                let indentless = self.mapping_context && !self.indention;
                self.increase_indent(false, indentless);
                for item in items {
                    self.write_indent();
                    self.write_indicator("-", true, false, true);
                    self.expect_node(item, false, false, false);
                }
                self.pop_indent();
            }
            Node::Map(entries) => {
                self.increase_indent(false, false);
                for (key, value) in entries {
                    self.write_indent();
                    // check_simple_key: a non-empty single-line scalar whose length plus that
                    // of its (unwritten) short tag (`!!str`, `!!int`, ...) is under 128.
                    let simple = !key.text.is_empty()
                        && !key.text.chars().any(is_break)
                        && key.text.chars().count() + key.kind.short_tag_len() < 128;
                    if simple {
                        self.root_context = false;
                        self.mapping_context = true;
                        self.simple_key_context = true;
                        self.expect_scalar(key);
                        self.write_indicator(":", false, false, false);
                    } else {
                        self.write_indicator("?", true, false, true);
                        self.root_context = false;
                        self.mapping_context = true;
                        self.simple_key_context = false;
                        self.expect_scalar(key);
                        self.write_indent();
                        self.write_indicator(":", true, false, true);
                    }
                    self.expect_node(value, false, true, false);
                }
                self.pop_indent();
            }
        }
    }

    fn expect_scalar(&mut self, scalar: &Scalar) {
        self.increase_indent(true, false);
        let text: Vec<char> = scalar.text.chars().collect();
        let analysis = analyze_scalar(&text);
        // `implicit[0]`: the plain text would resolve to the node's own tag. For non-strings the
        // representer's text always does; a string must not look like a bool, int, ...
        let implicit = scalar.kind != Kind::Str || !resolves_to_non_str(&scalar.text);
        let simple_key = self.simple_key_context;
        let style = if implicit
            && !(simple_key && (analysis.empty || analysis.multiline))
            && analysis.allow_block_plain
        {
            Style::Plain
        } else if analysis.allow_single_quoted && !(simple_key && analysis.multiline) {
            Style::SingleQuoted
        } else {
            Style::DoubleQuoted
        };
        let split = !simple_key;
        match style {
            Style::Plain => self.write_plain(&text, split),
            Style::SingleQuoted => self.write_single_quoted(&text, split),
            Style::DoubleQuoted => self.write_double_quoted(&text, split),
        }
        self.pop_indent();
    }

    fn write_str(&mut self, data: &str) {
        self.column += data.chars().count();
        self.out.push_str(data);
    }

    /// Writes `text[start..end]` (nothing if the range is empty or out of bounds, which the
    /// callers' invariants exclude).
    fn write_chars(&mut self, text: &[char], start: usize, end: usize) {
        let data = text.get(start..end).unwrap_or_default();
        self.column += data.len();
        self.out.extend(data);
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        whitespace: bool,
        indention: bool,
    ) {
        if !self.whitespace && need_whitespace {
            self.write_str(" ");
        }
        self.write_str(indicator);
        self.whitespace = whitespace;
        self.indention = self.indention && indention;
        self.open_ended = false;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = indent - self.column;
            self.out.extend(std::iter::repeat_n(' ', pad));
            self.column = indent;
        }
    }

    fn write_line_break(&mut self, data: Option<char>) {
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
        self.out.push(data.unwrap_or('\n'));
    }

    /// Writes the line breaks `text[start..end]` as PyYAML does inside plain and single-quoted
    /// scalars (a leading `\n` is doubled, since one break alone folds into a space).
    fn write_breaks(&mut self, text: &[char], start: usize, end: usize) {
        if text.get(start) == Some(&'\n') {
            self.write_line_break(None);
        }
        for &br in text.get(start..end).unwrap_or_default() {
            self.write_line_break((br != '\n').then_some(br));
        }
    }

    fn write_plain(&mut self, text: &[char], split: bool) {
        if self.root_context {
            self.open_ended = true;
        }
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write_str(" ");
        }
        self.whitespace = false;
        self.indention = false;
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(text, start, end);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(text, start, end);
                    self.write_indent();
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                self.write_chars(text, start, end);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
    }

    fn write_single_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("'", true, false, false);
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(text, start, end);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(text, start, end);
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || c == '\'' || is_break(c)) && start < end {
                self.write_chars(text, start, end);
                start = end;
            }
            if ch == Some('\'') {
                self.write_str("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.write_indicator("'", false, false, false);
    }

    fn write_double_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("\"", true, false, false);
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if ch.is_none_or(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c)) {
                if start < end {
                    self.write_chars(text, start, end);
                    start = end;
                }
                if let Some(c) = ch {
                    let escaped = match c {
                        '\0' => "\\0".to_owned(),
                        '\x07' => "\\a".to_owned(),
                        '\x08' => "\\b".to_owned(),
                        '\t' => "\\t".to_owned(),
                        '\n' => "\\n".to_owned(),
                        '\x0b' => "\\v".to_owned(),
                        '\x0c' => "\\f".to_owned(),
                        '\r' => "\\r".to_owned(),
                        '\x1b' => "\\e".to_owned(),
                        '"' => "\\\"".to_owned(),
                        '\\' => "\\\\".to_owned(),
                        '\u{85}' => "\\N".to_owned(),
                        '\u{a0}' => "\\_".to_owned(),
                        '\u{2028}' => "\\L".to_owned(),
                        '\u{2029}' => "\\P".to_owned(),
                        c if u32::from(c) <= 0xff => format!("\\x{:02X}", u32::from(c)),
                        c if u32::from(c) <= 0xffff => format!("\\u{:04X}", u32::from(c)),
                        c => format!("\\U{:08X}", u32::from(c)),
                    };
                    self.write_str(&escaped);
                    start = end + 1;
                }
            }
            // Python: `self.column + (end - start) > self.best_width`, where `end - start` is -1
            // right after an escape.
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                && self.column + end > BEST_WIDTH + start
                && split
            {
                if start < end {
                    self.write_chars(text, start, end);
                    start = end;
                }
                self.write_str("\\");
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text.get(start) == Some(&' ') {
                    self.write_str("\\");
                }
            }
            end += 1;
        }
        self.write_indicator("\"", false, false, false);
    }
}
