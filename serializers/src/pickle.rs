//! The `pickle` serializer, **decode only** (feature `pickle`), through `serde-pickle`.

use crate::error::{Error, Result};
use crate::serializer::Serializer;

/// Content type of the `pickle` serializer.
pub const PICKLE_CONTENT_TYPE: &str = "application/x-python-serialize";

/// The `pickle` serializer: content type `application/x-python-serialize`, content encoding
/// `binary`. **Reads pickle, never writes it.**
///
/// # Why it exists
///
/// Existing Python/Celery producers configured with `serializer="pickle"` already put pickle
/// bodies on shared brokers. This lets a Rust consumer read the *plain data* in them (dicts,
/// lists, tuples, sets, str, bytes, int, float, bool, None — protocols 0 to 5) instead of
/// requiring every producer to be migrated first.
///
/// # Security
///
/// Python's `pickle.loads` executes code: `GLOBAL`/`STACK_GLOBAL` import any attribute of any
/// module and `REDUCE`/`NEWOBJ`/`INST`/`OBJ`/`BUILD` call it, so a pickle body can run
/// `os.system`. Nothing of the kind can happen here:
///
/// * `serde-pickle` is a pure data decoder: it interprets the opcode stream into its own
///   value tree and never imports, calls or constructs anything (there is no Python runtime).
/// * Before `serde-pickle` sees the body, every opcode is checked against an allowlist, and
///   the body is refused with [`Error::Decode`] if it contains `STACK_GLOBAL`, `INST`, `OBJ`,
///   `NEWOBJ`, `NEWOBJ_EX`, `BUILD`, `PERSID`/`BINPERSID` or `EXT1/2/4` (object construction,
///   persistent ids, the copyreg extension registry), or a `GLOBAL` other than the handful of
///   builtins Python itself emits for plain data in protocols 0-3 (`builtins.set`,
///   `builtins.frozenset`, `builtins.bytearray`, `builtins.list`, `builtins.int`, also as
///   `__builtin__.*`, and `_codecs.encode` for `bytes`), which `serde-pickle` maps to the
///   corresponding data without calling anything. A `REDUCE` can thus only apply one of those
///   names; anything else (e.g. `datetime.datetime`, `os.system`, a user class) is an error,
///   not an object. Without this check `serde-pickle` would turn an instance of a user class
///   into its state dict, silently accepting data of a type the consumer never agreed to.
/// * Protocol-5 out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`) are refused.
/// * Trailing bytes after `STOP` are an error, and so is container nesting deeper than 128
///   levels (as for msgpack and yaml; the check simulates the pickle stack's shape before
///   decoding, since decoding recurses once per level). A container may not grow after it was
///   put inside another one (Python's pickler never does that), which keeps that check exact.
///
/// Known limits: integers beyond `i64` fail to decode; a protocol-4 `bytearray` (written with
/// `STACK_GLOBAL`) is refused; some bodies sharing one object in several places fail in
/// `serde-pickle` with "recursive structure found" (plain sharing such as `{"a": x, "b": x}`
/// decodes, as copies).
///
/// Even so, kombu disables pickle by default and so do we:
/// [`enabled_by_default`](Serializer::enabled_by_default) is `false`, so a consumer must name it
/// in its accept list (`registry.accept(["pickle"])`).
///
/// # Why never encode
///
/// [`encode`](Serializer::encode) fails with [`Error::Encode`]. Accepting pickle is unsafe for
/// a *Python* consumer (its `loads` runs code). If kombu-rs produced pickle bodies, Python
/// consumers would have to enable pickle in their accept lists to read them; we never push them
/// toward that. Use `json` (or `msgpack`) to send.
///
/// ```
/// use kombu_serializers::Registry;
/// let registry = Registry::default();
/// // pickle.dumps({"a": 1}, protocol=4)
/// let body = b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";
/// let accept = registry.accept(["pickle"])?;
/// let back: std::collections::BTreeMap<String, i32> = registry.decode(
///     body,
///     Some("application/x-python-serialize"),
///     Some("binary"),
///     Some(&accept),
/// )?;
/// assert_eq!(back["a"], 1);
/// assert!(registry.encode(&back, "pickle").is_err());
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickleSerializer;

/// Container nesting past which decoding fails (as for msgpack and yaml).
const MAX_DEPTH: usize = 128;

/// Globals `serde-pickle` maps to plain data itself (without calling anything).
const ALLOWED_GLOBALS: [(&str, &str); 11] = [
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "list"),
    ("builtins", "int"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"),
    ("__builtin__", "list"),
    ("__builtin__", "int"),
    ("_codecs", "encode"),
];

fn refuse(msg: String) -> Error {
    Error::Decode {
        content_type: PICKLE_CONTENT_TYPE.to_owned(),
        source: msg.into(),
    }
}

struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| refuse("truncated pickle".to_owned()))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| refuse("truncated pickle (missing newline)".to_owned()))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn len_prefixed(&mut self, width: usize) -> Result<()> {
        let len = usize::try_from(le(self.take(width)?))
            .map_err(|_| refuse("pickle length out of range".to_owned()))?;
        self.take(len).map(|_| ())
    }
}

/// A simulated stack entry: its container nesting depth (0 for scalars) and whether it has
/// been put inside another container.
#[derive(Clone, Copy)]
struct Node {
    depth: usize,
    referenced: bool,
}

/// Simulates the pickle machine's stack on container *depths* only, to refuse nesting deeper
/// than [`MAX_DEPTH`] before anything is decoded (the type-erased visitor and `serde-pickle`'s
/// value drop recurse once per level).
#[derive(Default)]
struct Shape {
    nodes: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, usize>,
}

impl Shape {
    fn push(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(refuse(format!(
                "pickle nests deeper than {MAX_DEPTH} levels"
            )));
        }
        self.nodes.push(Node {
            depth,
            referenced: false,
        });
        self.stack.push(self.nodes.len() - 1);
        Ok(())
    }

    fn pop(&mut self) -> Result<usize> {
        self.stack
            .pop()
            .ok_or_else(|| refuse("pickle stack underflow".to_owned()))
    }

    fn top(&self) -> Result<usize> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| refuse("pickle stack underflow".to_owned()))
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| refuse("pickle MARK missing".to_owned()))?;
        if mark > self.stack.len() {
            return Err(refuse("pickle stack underflow".to_owned()));
        }
        Ok(self.stack.split_off(mark))
    }

    /// Marks `children` as held by a container and returns that container's depth.
    fn adopt(&mut self, children: &[usize]) -> usize {
        let mut depth = 1;
        for &c in children {
            self.nodes[c].referenced = true;
            depth = depth.max(self.nodes[c].depth + 1);
        }
        depth
    }

    fn build(&mut self, children: &[usize]) -> Result<()> {
        let depth = self.adopt(children);
        self.push(depth)
    }

    /// Adds `children` to the container on top of the stack. A container already held by
    /// another one may not grow (its holder's depth would be stale); Python's pickler never
    /// does this (an object is complete before it is referenced, recursion aside, which
    /// `serde-pickle` refuses anyway).
    fn extend_top(&mut self, children: &[usize]) -> Result<()> {
        let target = self.top()?;
        if self.nodes[target].referenced {
            return Err(refuse(
                "pickle grows a container after it was referenced".to_owned(),
            ));
        }
        let depth = self.adopt(children).max(self.nodes[target].depth);
        if depth > MAX_DEPTH {
            return Err(refuse(format!(
                "pickle nests deeper than {MAX_DEPTH} levels"
            )));
        }
        self.nodes[target].depth = depth;
        Ok(())
    }

    fn put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u64) -> Result<()> {
        let node = *self
            .memo
            .get(&key)
            .ok_or_else(|| refuse(format!("pickle memo key {key} missing")))?;
        self.stack.push(node);
        Ok(())
    }
}

fn memo_key_line(line: &[u8]) -> Result<u64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| refuse("invalid pickle memo key".to_owned()))
}

fn le(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

/// Walks the opcode stream up to `STOP` and refuses anything outside the data-only allowlist,
/// or nesting deeper than [`MAX_DEPTH`].
fn check_opcodes(data: &[u8]) -> Result<()> {
    let mut s = Scanner { data, pos: 0 };
    let mut shape = Shape::default();
    loop {
        let at = s.pos;
        let op = *s
            .take(1)
            .map_err(|_| refuse("truncated pickle (no STOP opcode)".to_owned()))?
            .first()
            .unwrap_or(&0);
        match op {
            b'.' => break, // STOP
            b'(' => shape.marks.push(shape.stack.len()),
            // Empty containers.
            b']' | b'}' | b')' | 0x8f => shape.push(1)?,
            // Containers from the items since MARK: LIST, TUPLE, DICT, FROZENSET.
            b'l' | b't' | b'd' | 0x91 => {
                let items = shape.pop_mark()?;
                shape.build(&items)?;
            }
            // TUPLE1, TUPLE2, TUPLE3.
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(shape.pop()?);
                }
                shape.build(&items)?;
            }
            // APPEND.
            b'a' => {
                let item = shape.pop()?;
                shape.extend_top(&[item])?;
            }
            // SETITEM.
            b's' => {
                let value = shape.pop()?;
                let key = shape.pop()?;
                shape.extend_top(&[key, value])?;
            }
            // APPENDS, SETITEMS, ADDITEMS.
            b'e' | b'u' | 0x90 => {
                let items = shape.pop_mark()?;
                shape.extend_top(&items)?;
            }
            // REDUCE: one of the allowed builtins applied to its argument tuple; the result is
            // no deeper than the tuple.
            b'R' => {
                let args = shape.pop()?;
                shape.pop()?;
                let depth = shape.nodes[args].depth;
                shape.nodes[args].referenced = true;
                shape.push(depth)?;
            }
            // POP (of an item, or of a MARK when the frame is empty, as serde-pickle does).
            b'0' => {
                if shape.marks.last() == Some(&shape.stack.len()) {
                    shape.pop_mark()?;
                } else {
                    shape.pop()?;
                }
            }
            // POP_MARK.
            b'1' => {
                shape.pop_mark()?;
            }
            // DUP.
            b'2' => {
                let top = shape.top()?;
                shape.stack.push(top);
            }
            // Scalars without argument: NONE, NEWTRUE, NEWFALSE.
            b'N' | 0x88 | 0x89 => shape.push(0)?,
            // PROTO.
            0x80 => {
                s.take(1)?;
            }
            // BININT1.
            b'K' => {
                s.take(1)?;
                shape.push(0)?;
            }
            // BINPUT, LONG_BINPUT, MEMOIZE.
            b'q' => shape.put(le(s.take(1)?))?,
            b'r' => shape.put(le(s.take(4)?))?,
            0x94 => shape.put(shape.memo.len() as u64)?,
            // BINGET, LONG_BINGET.
            b'h' => shape.get(le(s.take(1)?))?,
            b'j' => shape.get(le(s.take(4)?))?,
            // PUT, GET (text keys).
            b'p' => shape.put(memo_key_line(s.line()?)?)?,
            b'g' => shape.get(memo_key_line(s.line()?)?)?,
            // BININT2.
            b'M' => {
                s.take(2)?;
                shape.push(0)?;
            }
            // BININT.
            b'J' => {
                s.take(4)?;
                shape.push(0)?;
            }
            // BINFLOAT.
            b'G' => {
                s.take(8)?;
                shape.push(0)?;
            }
            // FRAME.
            0x95 => {
                s.take(8)?;
            }
            // Newline-terminated: INT, LONG, FLOAT, STRING, UNICODE.
            b'I' | b'L' | b'F' | b'S' | b'V' => {
                s.line()?;
                shape.push(0)?;
            }
            // 1-byte length: SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE, LONG1.
            b'U' | b'C' | 0x8c | 0x8a => {
                s.len_prefixed(1)?;
                shape.push(0)?;
            }
            // 4-byte length: BINSTRING, BINUNICODE, BINBYTES, LONG4.
            b'T' | b'X' | b'B' | 0x8b => {
                s.len_prefixed(4)?;
                shape.push(0)?;
            }
            // 8-byte length: BINUNICODE8, BINBYTES8, BYTEARRAY8.
            0x8d | 0x8e | 0x96 => {
                s.len_prefixed(8)?;
                shape.push(0)?;
            }
            // GLOBAL: only the builtins serde-pickle maps to data.
            b'c' => {
                let module = String::from_utf8_lossy(s.line()?).into_owned();
                let name = String::from_utf8_lossy(s.line()?).into_owned();
                if !ALLOWED_GLOBALS.contains(&(module.as_str(), name.as_str())) {
                    return Err(refuse(format!(
                        "pickle refers to the Python global {module}.{name} at byte {at}; \
                         kombu-rs decodes plain data only and never imports or calls anything"
                    )));
                }
                shape.push(0)?;
            }
            other => {
                let what = match other {
                    0x93 => "STACK_GLOBAL (a Python global)",
                    b'i' | b'o' | 0x81 | 0x92 => "INST/OBJ/NEWOBJ (object construction)",
                    b'b' => "BUILD (object state)",
                    b'P' | b'Q' => "PERSID (persistent id)",
                    0x82..=0x84 => "EXT (copyreg extension registry)",
                    0x97 | 0x98 => "out-of-band buffer",
                    _ => "unknown opcode",
                };
                return Err(refuse(format!(
                    "pickle opcode 0x{other:02x} at byte {at} refused: {what}; \
                     kombu-rs decodes plain data only"
                )));
            }
        }
    }
    if s.pos != data.len() {
        return Err(refuse(format!(
            "{} bytes of extra data after the pickle STOP opcode",
            data.len() - s.pos
        )));
    }
    Ok(())
}

impl Serializer for PickleSerializer {
    fn name(&self) -> &str {
        "pickle"
    }

    fn content_type(&self) -> &str {
        PICKLE_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "binary"
    }

    /// `false`: as in kombu, a consumer must name pickle in its accept list.
    fn enabled_by_default(&self) -> bool {
        false
    }

    /// Always fails: kombu-rs reads pickle but never writes it (see the type's docs).
    fn encode(&self, _value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        Err(Error::Encode {
            serializer: self.name().to_owned(),
            source: "kombu-rs reads pickle but never writes it (pickle is unsafe to accept; \
                     use json or msgpack)"
                .into(),
        })
    }

    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        check_opcodes(data)?;
        let decode_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            content_type: PICKLE_CONTENT_TYPE.to_owned(),
            source,
        };
        // Default options: unresolved globals and recursive structures are errors, and class
        // restore state is not kept.
        let mut de = serde_pickle::Deserializer::new(data, serde_pickle::DeOptions::new());
        {
            let mut erased = <dyn erased_serde::Deserializer>::erase(&mut de);
            visit(&mut erased).map_err(|e| decode_err(Box::new(e)))?;
        }
        de.end().map_err(|e| decode_err(Box::new(e)))?;
        Ok(())
    }
}
