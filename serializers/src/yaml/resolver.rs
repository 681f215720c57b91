//! PyYAML's implicit resolver (YAML 1.1 as in `yaml/resolver.py`): which plain scalars read
//! back as something other than a string, so the emitter quotes them.

/// A cursor over ASCII bytes for the hand-written versions of PyYAML's resolver regexps.
pub(super) struct Cur<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Consumes one byte matching `pred`.
    fn eat(&mut self, pred: impl Fn(u8) -> bool) -> bool {
        match self.peek() {
            Some(b) if pred(b) => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }

    /// Consumes the literal `lit` if it comes next.
    fn eat_str(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// Consumes bytes matching `pred` (greedy); returns how many.
    fn eat_while(&mut self, pred: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.eat(&pred) {}
        self.i - start
    }

    fn sign(&mut self) {
        self.eat(|b| b == b'-' || b == b'+');
    }
}

pub(super) fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

pub(super) fn digit_(b: u8) -> bool {
    b.is_ascii_digit() || b == b'_'
}

/// `(?::[0-5]?[0-9])+` followed by what `rest` accepts: the sexagesimal groups, each one or two
/// digits (the first of two at most 5). Greedy is exact here: a group ends at `:` or `.` / end.
pub(super) fn sexagesimal_groups(c: &mut Cur<'_>) -> bool {
    let mut groups = 0;
    while c.eat(|b| b == b':') {
        let start = c.i;
        let n = c.eat_while(digit);
        let ok = match n {
            1 => true,
            2 => c.s[start] <= b'5',
            _ => false,
        };
        if !ok {
            return false;
        }
        groups += 1;
    }
    groups > 0
}

pub(super) fn octal_(b: u8) -> bool {
    (b'0'..=b'7').contains(&b) || b == b'_'
}

pub(super) fn nonzero_digit(b: u8) -> bool {
    (b'1'..=b'9').contains(&b)
}

/// Matches one alternative of a resolver regexp against the whole of `s`: `pattern` consumes
/// from the cursor (after an optional sign when `signed`) and must reach the end.
pub(super) fn whole_match(s: &str, signed: bool, pattern: impl Fn(&mut Cur<'_>) -> bool) -> bool {
    let mut c = Cur::new(s);
    if signed {
        c.sign();
    }
    pattern(&mut c) && c.done()
}

/// `tag:yaml.org,2002:int`.
pub(super) fn is_yaml11_int(s: &str) -> bool {
    // [-+]?0b[0-1_]+
    whole_match(s, true, |c| {
        c.eat_str("0b") && c.eat_while(|b| b == b'0' || b == b'1' || b == b'_') > 0
    })
    // [-+]?0[0-7_]+
    || whole_match(s, true, |c| c.eat(|b| b == b'0') && c.eat_while(octal_) > 0)
    // [-+]?(?:0|[1-9][0-9_]*)
    || whole_match(s, true, |c| c.eat(|b| b == b'0'))
    || whole_match(s, true, |c| {
        let first = c.eat(nonzero_digit);
        c.eat_while(digit_);
        first
    })
    // [-+]?0x[0-9a-fA-F_]+
    || whole_match(s, true, |c| {
        c.eat_str("0x") && c.eat_while(|b| b.is_ascii_hexdigit() || b == b'_') > 0
    })
    // [-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+
    || whole_match(s, true, |c| {
        let first = c.eat(nonzero_digit);
        c.eat_while(digit_);
        first && sexagesimal_groups(c)
    })
}

/// `(?:[eE][-+][0-9]+)?`.
pub(super) fn optional_exponent(c: &mut Cur<'_>) -> bool {
    !c.eat(|b| b == b'e' || b == b'E')
        || (c.eat(|b| b == b'-' || b == b'+') && c.eat_while(digit) > 0)
}

/// `tag:yaml.org,2002:float`.
pub(super) fn is_yaml11_float(s: &str) -> bool {
    // [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    whole_match(s, true, |c| {
        let first = c.eat(digit);
        c.eat_while(digit_);
        let point = c.eat(|b| b == b'.');
        c.eat_while(digit_);
        first && point && optional_exponent(c)
    })
    // \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    || whole_match(s, false, |c| {
        let head = c.eat(|b| b == b'.') && c.eat(digit);
        c.eat_while(digit_);
        head && optional_exponent(c)
    })
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    || whole_match(s, true, |c| {
        let first = c.eat(digit);
        c.eat_while(digit_);
        let head = first && sexagesimal_groups(c) && c.eat(|b| b == b'.');
        c.eat_while(digit_);
        head
    })
    // [-+]?\.(?:inf|Inf|INF)
    || whole_match(s, true, |c| {
        c.eat(|b| b == b'.') && (c.eat_str("inf") || c.eat_str("Inf") || c.eat_str("INF"))
    })
    // \.(?:nan|NaN|NAN)
    || matches!(s, ".nan" | ".NaN" | ".NAN")
}

/// `tag:yaml.org,2002:timestamp`.
pub(super) fn is_yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    // [0-9]{4}-[0-9]{2}-[0-9]{2}
    if b.len() == 10
        && b.iter().enumerate().all(|(i, &ch)| {
            if i == 4 || i == 7 {
                ch == b'-'
            } else {
                digit(ch)
            }
        })
    {
        return true;
    }
    // [0-9]{4}-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9]{2}:[0-9]{2}
    // (?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?
    let mut c = Cur::new(s);
    let one_or_two = |c: &mut Cur<'_>| (1..=2).contains(&c.eat_while(digit));
    let exactly_two = |c: &mut Cur<'_>| c.eat(digit) && c.eat(digit);
    let blank = |b: u8| b == b' ' || b == b'\t';
    let head = c.eat_while(digit) == 4
        && c.eat(|b| b == b'-')
        && one_or_two(&mut c)
        && c.eat(|b| b == b'-')
        && one_or_two(&mut c)
        && (c.eat(|b| b == b'T' || b == b't') || c.eat_while(blank) > 0)
        && one_or_two(&mut c)
        && c.eat(|b| b == b':')
        && exactly_two(&mut c)
        && c.eat(|b| b == b':')
        && exactly_two(&mut c);
    if !head {
        return false;
    }
    if c.eat(|b| b == b'.') {
        c.eat_while(digit);
    }
    if c.done() {
        return true;
    }
    c.eat_while(blank);
    if c.eat(|b| b == b'Z') {
        return c.done();
    }
    c.eat(|b| b == b'-' || b == b'+')
        && one_or_two(&mut c)
        && (c.done() || (c.eat(|b| b == b':') && exactly_two(&mut c) && c.done()))
}

/// Whether PyYAML's implicit resolvers give `s` (`^...$`) a tag other than `str`: bool, int,
/// float, null, timestamp, merge (`<<`), value (`=`) or the documentation-only `yaml` (`!`,
/// `&`, `*`). Those strings cannot be written plain.
pub(super) fn resolves_to_non_str(s: &str) -> bool {
    fn whole(s: &str) -> bool {
        matches!(
            s,
            "yes"
                | "Yes"
                | "YES"
                | "no"
                | "No"
                | "NO"
                | "true"
                | "True"
                | "TRUE"
                | "false"
                | "False"
                | "FALSE"
                | "on"
                | "On"
                | "ON"
                | "off"
                | "Off"
                | "OFF"
                | "~"
                | "null"
                | "Null"
                | "NULL"
                | ""
                | "<<"
                | "="
                | "!"
                | "&"
                | "*"
        ) || is_yaml11_float(s)
            || is_yaml11_int(s)
            || is_yaml11_timestamp(s)
    }
    // Python's `$` also matches before a final newline; the resolvers are picked by the first
    // character, so a lone "\n" has none.
    whole(s) || (s.len() > 1 && s.strip_suffix('\n').is_some_and(whole))
}
