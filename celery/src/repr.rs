//! Celery's `argsrepr` / `kwargsrepr`: what Python's `celery.utils.saferepr.saferepr(args,
//! 1024)` prints for JSON values, so logs, events and Flower show a Rust-sent task as they show
//! a Python-sent one.
//!
//! As saferepr: strings in single quotes with only `'` escaped (`\'`); `None`, `True`,
//! `False`; floats as Python's `repr`; containers nested deeper than three levels shown as
//! `[...]` / `{...}`; the whole cut at 1,024 characters with `...` (saferepr closes the open
//! brackets after its cut; here the cut text ends with `...` alone).

use serde_json::Value as Json;

/// saferepr's default length.
pub(crate) const MAX_LEN: usize = 1024;
/// saferepr's default depth.
const MAX_LEVELS: usize = 3;

/// The repr of positional arguments: a Python tuple (`(2, 3)`, `(1,)`, `()`).
pub(crate) fn args_repr(args: &[Json]) -> String {
    let mut out = String::from("(");
    for (i, value) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(&mut out, value, 1);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    cut(out)
}

/// The repr of keyword arguments: a Python dict (`{'k': 'v'}`).
pub(crate) fn kwargs_repr(kwargs: &serde_json::Map<String, Json>) -> String {
    let mut out = String::new();
    write_map(&mut out, kwargs, 0);
    cut(out)
}

/// The repr of one value (a task's result in `task-succeeded`, a string in a reply text).
pub(crate) fn value_repr(value: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    cut(out)
}

fn cut(text: String) -> String {
    match text.char_indices().nth(MAX_LEN) {
        None => text,
        Some((at, _)) => format!("{}...", &text[..at]),
    }
}

fn write_value(out: &mut String, value: &Json, level: usize) {
    match value {
        Json::Null => out.push_str("None"),
        Json::Bool(true) => out.push_str("True"),
        Json::Bool(false) => out.push_str("False"),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&float_repr(f)),
            (None, None, None) => out.push_str(&n.to_string()),
        },
        Json::String(s) => {
            out.push('\'');
            out.push_str(&s.replace('\'', "\\'"));
            out.push('\'');
        }
        Json::Array(items) if level >= MAX_LEVELS => {
            let _ = items;
            out.push_str("[...]");
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, level + 1);
            }
            out.push(']');
        }
        Json::Object(map) => write_map(out, map, level),
    }
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Json>, level: usize) {
    if level >= MAX_LEVELS {
        out.push_str("{...}");
        return;
    }
    out.push('{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(out, &Json::String(key.clone()), level + 1);
        out.push_str(": ");
        write_value(out, value, level + 1);
    }
    out.push('}');
}

/// Python's `repr(float)`: the shortest text that reads back, `1.0`, `1e+16`, `inf`.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Python's JSON writes a finite float as its repr.
    kombu_serializers::to_python_json_string(&f).unwrap_or_else(|_| f.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs_read_as_celerys() {
        let args = json!([2, 3]);
        assert_eq!(args_repr(args.as_array().unwrap_or(&Vec::new())), "(2, 3)");
        assert_eq!(args_repr(&[json!(1)]), "(1,)");
        assert_eq!(args_repr(&[]), "()");
        // The same values as `saferepr((1.0, "it's", 'a"b', None, True, [1, 2], {'a': 1.5},
        // 1e16, 0.1, -0.0), 1024)` printed by Celery 5.7.
        let mixed = [
            json!(1.0),
            json!("it's"),
            json!("a\"b"),
            json!(null),
            json!(true),
            json!([1, 2]),
            json!({"a": 1.5}),
            json!(1e16),
            json!(0.1),
            json!(-0.0),
        ];
        assert_eq!(
            args_repr(&mixed),
            r#"(1.0, 'it\'s', 'a"b', None, True, [1, 2], {'a': 1.5}, 1e+16, 0.1, -0.0)"#
        );
        // saferepr((..., [[[[1]]]], {'a': {'b': {'c': {'d': 1}}}}), 1024)
        let deep = [json!([[[[1]]]]), json!({"a": {"b": {"c": {"d": 1}}}})];
        assert_eq!(args_repr(&deep), "([[[...]]], {'a': {'b': {...}}})");
        let kwargs = json!({"k": "v"});
        assert_eq!(
            kwargs_repr(kwargs.as_object().unwrap_or(&serde_json::Map::new())),
            "{'k': 'v'}"
        );
        let long = args_repr(&[json!("x".repeat(2000))]);
        assert_eq!(long.chars().count(), MAX_LEN + 3);
        assert!(long.ends_with("xx..."));
    }
}
