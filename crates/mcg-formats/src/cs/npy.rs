//! The `.npy` container: the header's Python literal, structured dtypes and the records.

use super::*;

/// A one-dimensional structured array in `.npy` format, borrowed from the file's bytes.
pub(super) struct Npy<'a> {
    pub(super) path: &'a Path,
    /// The records, `len × itemsize` bytes.
    pub(super) data: &'a [u8],
    pub(super) len: usize,
    pub(super) itemsize: usize,
    pub(super) fields: Vec<Field>,
}

/// One field of the record type.
pub(super) struct Field {
    pub(super) name: String,
    /// Byte offset in the record.
    pub(super) offset: usize,
    pub(super) dtype: Dtype,
    /// Sub-array shape, as written (`(2,)` for `blob/shape`), empty for a scalar.
    pub(super) shape: Vec<usize>,
    /// Number of elements (product of `shape`).
    pub(super) count: usize,
}

/// One element type: its NumPy kind letter, size in bytes and byte order.
#[derive(Clone)]
pub(super) struct Dtype {
    pub(super) kind: u8,
    pub(super) size: usize,
    pub(super) big_endian: bool,
    /// The descriptor as written (`<f4`), for messages.
    pub(super) text: String,
}

/// The deepest nesting of brackets accepted in a header (cryoSPARC uses 3).
pub(super) const MAX_DEPTH: usize = 32;

impl<'a> Npy<'a> {
    pub(super) fn parse(bytes: &'a [u8], path: &'a Path) -> Result<Self> {
        let bad = |problem: String| FormatError::invalid(path, "npy header", problem);
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad(
                "not a NumPy .npy file (a cryoSPARC .cs file starts with \\x93NUMPY)".into(),
            ));
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (header_len, start): (usize, usize) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            2 | 3 => return Err(bad("file ends inside the header".into())),
            _ => {
                return Err(bad(format!(
                    "format version {major}.{minor}: expected 1.0, 2.0 or 3.0"
                )));
            }
        };
        let data_start = start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "header of {header_len} bytes, but the file holds {}",
                    bytes.len()
                ))
            })?;
        let header = String::from_utf8_lossy(&bytes[start..data_start]);

        let dict = match Lit::parse(&header) {
            Ok(Lit::Dict(d)) => d,
            Ok(_) => return Err(bad("the header is not a dictionary".into())),
            Err(e) => return Err(bad(format!("unreadable header dictionary: {e}"))),
        };
        let get = |key: &str| {
            dict.iter()
                .find(|(k, _)| matches!(k, Lit::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| bad(format!("the header has no '{key}'")))
        };
        match get("fortran_order")? {
            Lit::Bool(false) => {}
            other => {
                return Err(bad(format!("fortran_order is {other:?}: expected False")));
            }
        }
        let len = match get("shape")? {
            Lit::Tuple(dims) => match dims.as_slice() {
                [Lit::Int(n)] => usize::try_from(*n)
                    .map_err(|_| bad(format!("shape ({n},): expected a record count")))?,
                _ => {
                    return Err(bad(format!(
                        "shape {dims:?}: expected a one-dimensional array of particles"
                    )));
                }
            },
            other => return Err(bad(format!("shape {other:?}: expected a tuple"))),
        };
        let (fields, itemsize) = match get("descr")? {
            Lit::List(items) => parse_fields(items, 0).map_err(bad)?,
            Lit::Str(d) => {
                return Err(bad(format!(
                    "dtype {d:?}: expected a structured array (a list of named fields)"
                )));
            }
            other => return Err(bad(format!("descr {other:?}: expected a list of fields"))),
        };
        if itemsize == 0 {
            return Err(bad("records of zero bytes: expected particle fields".into()));
        }
        let total = len
            .checked_mul(itemsize)
            .ok_or_else(|| bad(format!("{len} records of {itemsize} bytes overflow")))?;
        let available = bytes.len() - data_start;
        if total > available {
            return Err(FormatError::invalid(
                path,
                "npy data",
                format!(
                    "truncated: {len} records of {itemsize} bytes need {total} bytes, \
                     the file holds {available}"
                ),
            ));
        }
        Ok(Self {
            path,
            data: &bytes[data_start..data_start + total],
            len,
            itemsize,
            fields,
        })
    }

    /// All elements of numeric field `f` (which must hold `per_record` of them), record by
    /// record.
    pub(super) fn numbers(&self, f: usize, per_record: usize) -> Result<Vec<f64>> {
        let field = &self.fields[f];
        if !is_numeric(&field.dtype) || field.count != per_record {
            let shape = if field.shape.is_empty() {
                String::new()
            } else {
                format!(" of shape {:?}", field.shape)
            };
            return Err(FormatError::invalid(
                self.path,
                field.name.clone(),
                format!(
                    "dtype {}{shape}: expected {per_record} number(s) per particle",
                    field.dtype.text
                ),
            ));
        }
        let mut out = Vec::with_capacity(self.len * per_record);
        for r in 0..self.len {
            for e in 0..per_record {
                out.push(self.element(field, r, e));
            }
        }
        Ok(out)
    }

    /// Like [`Self::numbers`], refusing NaN and infinities.
    pub(super) fn finite(&self, f: usize, per_record: usize) -> Result<Vec<f64>> {
        let v = self.numbers(f, per_record)?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.bad(f, i / per_record, &v[i].to_string(), "a finite number")),
            None => Ok(v),
        }
    }

    /// Element `e` of numeric field `field` in record `r` (the caller checked kind and bounds).
    pub(super) fn element(&self, field: &Field, r: usize, e: usize) -> f64 {
        let raw = self.raw(field, r, e);
        match (field.dtype.kind, field.dtype.size) {
            (b'f', 2) => f64::from(crate::half::f16_to_f32(raw as u16)),
            (b'f', 4) => f64::from(f32::from_bits(raw as u32)),
            (b'f', 8) => f64::from_bits(raw),
            _ => self.integer_of(field, raw) as f64,
        }
    }

    /// Element 0 of integer or boolean field `field` in record `r`, exactly.
    pub(super) fn integer(&self, field: &Field, r: usize) -> i128 {
        self.integer_of(field, self.raw(field, r, 0))
    }

    pub(super) fn integer_of(&self, field: &Field, raw: u64) -> i128 {
        if field.dtype.kind == b'i' {
            // Sign-extend from `size` bytes.
            let shift = 64 - 8 * field.dtype.size as u32;
            i128::from((raw << shift) as i64 >> shift)
        } else {
            i128::from(raw)
        }
    }

    /// The bytes of one element as a little-endian u64 (at most 8 bytes; checked by
    /// [`is_numeric`]).
    pub(super) fn raw(&self, field: &Field, r: usize, e: usize) -> u64 {
        let size = field.dtype.size;
        let at = r * self.itemsize + field.offset + e * size;
        let mut buf = [0u8; 8];
        buf[..size].copy_from_slice(&self.data[at..at + size]);
        if field.dtype.big_endian {
            buf[..size].reverse();
        }
        u64::from_le_bytes(buf)
    }

    /// The string field `f` of record `r`: bytes up to the first NUL (`S`), or UCS-4 (`U`).
    pub(super) fn string(&self, f: usize, r: usize) -> Result<String> {
        let field = &self.fields[f];
        if !matches!(field.dtype.kind, b'S' | b'U') || field.count != 1 {
            return Err(FormatError::invalid(
                self.path,
                field.name.clone(),
                format!("dtype {}: expected a string", field.dtype.text),
            ));
        }
        let at = r * self.itemsize + field.offset;
        let b = &self.data[at..at + field.dtype.size];
        Ok(decode_string(&field.dtype, b))
    }

    /// Field `f` as one text per record when it holds one number or string per record;
    /// `None` for sub-arrays and raw bytes.
    pub(super) fn texts(&self, f: usize) -> Result<Option<Vec<String>>> {
        let field = &self.fields[f];
        if field.count != 1 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.len);
        match field.dtype.kind {
            b'S' | b'U' => {
                for r in 0..self.len {
                    out.push(self.string(f, r)?);
                }
            }
            _ if is_numeric(&field.dtype) => {
                for r in 0..self.len {
                    out.push(match (field.dtype.kind, field.dtype.size) {
                        (b'f', 8) => format!("{:?}", self.element(field, r, 0)),
                        // Shortest text of the stored f32/f16 value, not of its f64 widening.
                        (b'f', _) => format!("{:?}", self.element(field, r, 0) as f32),
                        // Integers exactly (a 64-bit uid does not fit an f64).
                        _ => self.integer(field, r).to_string(),
                    });
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(out))
    }

    /// A 0-based index from a stored number.
    pub(super) fn index(&self, v: f64, name: &str, r: usize) -> Result<usize> {
        if v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 {
            return Ok(v as usize);
        }
        Err(FormatError::invalid(
            self.path,
            format!("{name}, record {r}"),
            format!("found {v}, expected a non-negative integer"),
        ))
    }

    pub(super) fn missing(&self, name: &str, why: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            name.to_owned(),
            format!("field {name} is missing: {why}"),
        )
    }

    pub(super) fn bad(&self, f: usize, r: usize, found: &str, expected: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("{}, record {r}", self.fields[f].name),
            format!("found {found}, expected {expected}"),
        )
    }
}

pub(super) fn is_numeric(d: &Dtype) -> bool {
    match d.kind {
        b'f' => matches!(d.size, 2 | 4 | 8),
        b'i' | b'u' => matches!(d.size, 1 | 2 | 4 | 8),
        b'b' => d.size == 1,
        _ => false,
    }
}

pub(super) fn decode_string(d: &Dtype, b: &[u8]) -> String {
    if d.kind == b'U' {
        let chars = b.chunks_exact(4).map(|c| {
            let mut w = [c[0], c[1], c[2], c[3]];
            if d.big_endian {
                w.reverse();
            }
            u32::from_le_bytes(w)
        });
        chars
            .take_while(|&c| c != 0)
            .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    } else {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
}

/// Fields and record size of a structured `descr` list.
pub(super) fn parse_fields(
    items: &[Lit],
    depth: usize,
) -> std::result::Result<(Vec<Field>, usize), String> {
    if depth > MAX_DEPTH {
        return Err("dtype nested too deeply".into());
    }
    let mut fields = Vec::with_capacity(items.len());
    let mut offset = 0usize;
    for item in items {
        let Lit::Tuple(parts) = item else {
            return Err(format!("field {item:?}: expected (name, dtype[, shape])"));
        };
        let (name, dtype, shape) = match parts.as_slice() {
            [n, d] => (n, d, None),
            [n, d, s] => (n, d, Some(s)),
            _ => return Err(format!("field {item:?}: expected (name, dtype[, shape])")),
        };
        let name = match name {
            Lit::Str(s) => s.clone(),
            // (title, name) pairs.
            Lit::Tuple(t) if matches!(t.as_slice(), [_, Lit::Str(_)]) => match &t[1] {
                Lit::Str(s) => s.clone(),
                _ => unreachable!("matched above"),
            },
            other => return Err(format!("field name {other:?}: expected a string")),
        };
        let dtype = match dtype {
            Lit::Str(s) => parse_dtype(s).map_err(|e| format!("field {name:?}: {e}"))?,
            Lit::List(nested) => {
                let (_, size) = parse_fields(nested, depth + 1)?;
                Dtype {
                    kind: b'V',
                    size,
                    big_endian: false,
                    text: "(nested record)".into(),
                }
            }
            other => return Err(format!("field {name:?}: dtype {other:?} is not a string")),
        };
        let shape: Vec<usize> = match shape {
            None => Vec::new(),
            Some(Lit::Tuple(dims)) => dims
                .iter()
                .map(|d| match d {
                    Lit::Int(k) => usize::try_from(*k).map_err(|_| format!("dimension {k}")),
                    other => Err(format!("dimension {other:?}")),
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("field {name:?}: bad shape: {e}"))?,
            Some(Lit::Int(k)) => {
                vec![usize::try_from(*k).map_err(|_| format!("field {name:?}: shape {k}"))?]
            }
            Some(other) => return Err(format!("field {name:?}: shape {other:?}")),
        };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("field {name:?}: shape too large"))?;
        let bytes = count
            .checked_mul(dtype.size)
            .ok_or_else(|| format!("field {name:?}: size overflows"))?;
        fields.push(Field {
            name,
            offset,
            dtype,
            shape,
            count,
        });
        offset = offset
            .checked_add(bytes)
            .ok_or_else(|| "record size overflows".to_owned())?;
    }
    Ok((fields, offset))
}

/// A NumPy type descriptor such as `<f4`, `|S63`, `>u8`, `<U10`, `<M8[ns]`.
pub(super) fn parse_dtype(s: &str) -> std::result::Result<Dtype, String> {
    let b = s.as_bytes();
    let (big_endian, rest) = match b.first() {
        Some(b'<') => (false, &b[1..]),
        Some(b'>' | b'!') => (true, &b[1..]),
        Some(b'=') => (cfg!(target_endian = "big"), &b[1..]),
        Some(b'|') => (false, &b[1..]),
        _ => (cfg!(target_endian = "big"), b),
    };
    let Some((&kind, digits)) = rest.split_first() else {
        return Err(format!("dtype {s:?}: no type letter"));
    };
    if kind == b'O' {
        return Err(format!(
            "dtype {s:?} holds Python objects, stored as a pickle that cannot be read without \
             Python; re-save the array with fixed-width fields"
        ));
    }
    let digits_end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let tail = &digits[digits_end..];
    let n: usize = std::str::from_utf8(&digits[..digits_end])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("dtype {s:?}: no size"))?;
    if !(tail.is_empty() || (matches!(kind, b'M' | b'm') && tail.starts_with(b"["))) {
        return Err(format!(
            "dtype {s:?}: unexpected {:?}",
            String::from_utf8_lossy(tail)
        ));
    }
    let size = match kind {
        b'U' => n
            .checked_mul(4)
            .ok_or_else(|| format!("dtype {s:?}: too large"))?,
        b'a' | b'S' | b'V' | b'b' | b'i' | b'u' | b'f' | b'c' | b'M' | b'm' => n,
        other => return Err(format!("dtype {s:?}: unknown kind {:?}", other as char)),
    };
    Ok(Dtype {
        kind: if kind == b'a' { b'S' } else { kind },
        size,
        big_endian,
        text: s.to_owned(),
    })
}

/// A Python literal, as found in a `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

impl Lit {
    /// Parses one literal filling `text` (surrounding whitespace allowed).
    pub(super) fn parse(text: &str) -> std::result::Result<Lit, String> {
        let mut p = LitParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected text at byte {}", p.i));
        }
        Ok(v)
    }
}

pub(super) struct LitParser<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
}

impl LitParser<'_> {
    pub(super) fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    pub(super) fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        self.ws();
        let Some(c) = self.peek() else {
            return Err("header ends where a value was expected".into());
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Lit::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(format!("expected ':' at byte {}", self.i));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    if !self.separator(b'}')? {
                        return Ok(Lit::Dict(items));
                    }
                }
            }
            b'[' | b'(' => {
                let close = if c == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(close) {
                        self.i += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.separator(close)? {
                        break;
                    }
                }
                Ok(if c == b'[' {
                    Lit::List(items)
                } else {
                    Lit::Tuple(items)
                })
            }
            b'\'' | b'"' => self.string(),
            b'u' | b'b' | b'r' if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                self.i += 1;
                self.string()
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|d| d.is_ascii_digit()) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let v = text
                    .parse::<i128>()
                    .map_err(|_| format!("bad integer {text:?}"))?;
                if matches!(self.peek(), Some(b'L' | b'l')) {
                    self.i += 1; // Python 2 long suffix.
                }
                Ok(Lit::Int(v))
            }
            _ => {
                for (word, lit) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!(
                    "unexpected character {:?} at byte {}",
                    c as char, self.i
                ))
            }
        }
    }

    /// After an item: consumes `,` (returns true: more may follow) or `close` (returns false).
    pub(super) fn separator(&mut self, close: u8) -> std::result::Result<bool, String> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(format!(
                "expected ',' or '{}' at byte {}",
                close as char, self.i
            )),
        }
    }

    pub(super) fn string(&mut self) -> std::result::Result<Lit, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                _ if c == q => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'x' => {
                            let hex = self.s.get(self.i..self.i + 2).and_then(|h| {
                                u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                            });
                            let Some(v) = hex else {
                                return Err("bad \\x escape".into());
                            };
                            out.push(v);
                            self.i += 2;
                        }
                        other => out.push(other),
                    }
                }
                _ => out.push(c),
            }
        }
        Ok(Lit::Str(String::from_utf8_lossy(&out).into_owned()))
    }
}
