//! qs-style parsing of `application/x-www-form-urlencoded` bodies and query strings.
//!
//! Stripe and many other APIs encode nested data with brackets: `metadata[order]=6735`,
//! `expand[]=charge`, `items[0][price]=p_1`. The result is a JSON tree of strings.
//!
//! The parser is strict on purpose. Anything two servers could read differently is an
//! error, never a guess: a repeated plain key (`amount=1&amount=999`: Stripe takes the
//! last, a naive parser the first), a key that is both a value and a container, mixed
//! `a[]` and `a[0]`, sparse or out-of-order indexes, invalid percent-encoding or UTF-8.

use serde_json::{Map, Value};

/// Why a form or query could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QsError {
    #[error("key {0:?} is repeated")]
    RepeatedKey(String),
    #[error("key {0:?} is used both as a value and as a container")]
    Conflict(String),
    #[error("key {0:?} is malformed")]
    BadKey(String),
    #[error("array {0:?} mixes [] with indexes, or its indexes are not 0, 1, 2, ...")]
    BadIndex(String),
    #[error("invalid percent-encoding or UTF-8 in {0:?}")]
    BadEncoding(String),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_PAIRS} fields")]
    TooMany,
}

pub const MAX_DEPTH: usize = 32;
pub const MAX_PAIRS: usize = 10_000;
const MAX_INDEX: usize = MAX_PAIRS;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Push,
    Index(usize),
}

/// A tree under construction. Arrays remember how they were built.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Obj(Vec<(String, Node)>),
    Pushed(Vec<Node>),
    Indexed(Vec<(usize, Node)>),
}

/// Parses `input` (without a leading `?`).
pub fn parse(input: &str) -> Result<Value, QsError> {
    let mut root: Vec<(String, Node)> = Vec::new();
    let mut pairs = 0usize;
    for part in input.split('&') {
        if part.is_empty() {
            continue;
        }
        pairs += 1;
        if pairs > MAX_PAIRS {
            return Err(QsError::TooMany);
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = decode(k)?;
        let val = decode(v)?;
        let (first, rest) = split_key(&key)?;
        insert_obj(&mut root, &key, first, &rest, val)?;
    }
    Ok(Value::Object(finish_obj(root, "")?))
}

fn decode(s: &str) -> Result<String, QsError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = bytes.get(i + 1..i + 3).ok_or_else(|| QsError::BadEncoding(s.into()))?;
                let h = std::str::from_utf8(h).map_err(|_| QsError::BadEncoding(s.into()))?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| QsError::BadEncoding(s.into()))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QsError::BadEncoding(s.into()))
}

/// `a[b][0][]` → ("a", [Key b, Index 0, Push]).
fn split_key(key: &str) -> Result<(String, Vec<Seg>), QsError> {
    let bad = || QsError::BadKey(key.to_string());
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => {
            if key.contains(']') {
                return Err(bad());
            }
            return Ok((key.to_string(), Vec::new()));
        }
    };
    if head.is_empty() || head.contains(']') {
        return Err(bad());
    }
    let mut segs = Vec::new();
    while !rest.is_empty() {
        if !rest.starts_with('[') {
            return Err(bad());
        }
        let close = rest.find(']').ok_or_else(bad)?;
        let inner = &rest[1..close];
        if inner.contains('[') {
            return Err(bad());
        }
        segs.push(if inner.is_empty() {
            Seg::Push
        } else if inner.bytes().all(|b| b.is_ascii_digit()) {
            if inner.len() > 1 && inner.starts_with('0') {
                return Err(QsError::BadIndex(key.to_string()));
            }
            let n: usize = inner.parse().map_err(|_| QsError::BadIndex(key.to_string()))?;
            if n > MAX_INDEX {
                return Err(QsError::BadIndex(key.to_string()));
            }
            Seg::Index(n)
        } else {
            Seg::Key(inner.to_string())
        });
        rest = &rest[close + 1..];
        if segs.len() > MAX_DEPTH {
            return Err(QsError::TooDeep);
        }
    }
    Ok((head.to_string(), segs))
}

fn new_node(rest: &[Seg], val: String) -> Result<Node, QsError> {
    match rest.first() {
        None => Ok(Node::Leaf(val)),
        Some(Seg::Key(k)) => Ok(Node::Obj(vec![(k.clone(), new_node(&rest[1..], val)?)])),
        Some(Seg::Push) => Ok(Node::Pushed(vec![new_node(&rest[1..], val)?])),
        Some(Seg::Index(i)) => Ok(Node::Indexed(vec![(*i, new_node(&rest[1..], val)?)])),
    }
}

fn insert_obj(
    entries: &mut Vec<(String, Node)>,
    key: &str,
    name: String,
    rest: &[Seg],
    val: String,
) -> Result<(), QsError> {
    match entries.iter_mut().find(|(k, _)| *k == name) {
        None => {
            entries.push((name, new_node(rest, val)?));
            Ok(())
        }
        Some((_, node)) => insert_node(node, key, rest, val),
    }
}

fn insert_node(node: &mut Node, key: &str, rest: &[Seg], val: String) -> Result<(), QsError> {
    match (node, rest.first()) {
        (Node::Leaf(_), None) => Err(QsError::RepeatedKey(key.to_string())),
        (Node::Leaf(_), Some(_)) | (_, None) => Err(QsError::Conflict(key.to_string())),
        (Node::Obj(entries), Some(Seg::Key(k))) => insert_obj(entries, key, k.clone(), &rest[1..], val),
        (Node::Pushed(items), Some(Seg::Push)) => {
            // `a[]=1&a[]=2` appends; `a[][b]=1` starts a new element each time.
            items.push(new_node(&rest[1..], val)?);
            if items.len() > MAX_INDEX {
                return Err(QsError::TooMany);
            }
            Ok(())
        }
        (Node::Indexed(items), Some(Seg::Index(i))) => match items.iter_mut().find(|(n, _)| n == i) {
            Some((_, child)) => insert_node(child, key, &rest[1..], val),
            None => {
                items.push((*i, new_node(&rest[1..], val)?));
                Ok(())
            }
        },
        (Node::Pushed(_), Some(Seg::Index(_))) | (Node::Indexed(_), Some(Seg::Push)) => {
            Err(QsError::BadIndex(key.to_string()))
        }
        _ => Err(QsError::Conflict(key.to_string())),
    }
}

fn finish(node: Node, key: &str) -> Result<Value, QsError> {
    Ok(match node {
        Node::Leaf(s) => Value::String(s),
        Node::Obj(entries) => Value::Object(finish_obj(entries, key)?),
        Node::Pushed(items) => Value::Array(items.into_iter().map(|n| finish(n, key)).collect::<Result<_, _>>()?),
        Node::Indexed(items) => {
            // Indexes must be exactly 0..n, in order: `a[1]=x&a[0]=y` is refused
            // because servers disagree on whether order or index wins.
            for (pos, (i, _)) in items.iter().enumerate() {
                if *i != pos {
                    return Err(QsError::BadIndex(key.to_string()));
                }
            }
            Value::Array(items.into_iter().map(|(_, n)| finish(n, key)).collect::<Result<_, _>>()?)
        }
    })
}

fn finish_obj(entries: Vec<(String, Node)>, parent: &str) -> Result<Map<String, Value>, QsError> {
    let mut m = Map::new();
    for (k, n) in entries {
        let path = if parent.is_empty() { k.clone() } else { format!("{parent}[{k}]") };
        m.insert(k, finish(n, &path)?);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stripe_style_forms() {
        let cases = [
            ("charge=ch_1&amount=240000", json!({"charge": "ch_1", "amount": "240000"})),
            ("metadata[order]=6735", json!({"metadata": {"order": "6735"}})),
            ("expand[]=charge&expand[]=customer", json!({"expand": ["charge", "customer"]})),
            ("expand[0]=charge&expand[1]=customer", json!({"expand": ["charge", "customer"]})),
            (
                "items[0][price]=p_1&items[0][quantity]=2&items[1][price]=p_2",
                json!({"items": [{"price": "p_1", "quantity": "2"}, {"price": "p_2"}]}),
            ),
            ("a=hello+world&b=%E2%82%AC%26", json!({"a": "hello world", "b": "€&"})),
            ("flag&x=", json!({"flag": "", "x": ""})),
            ("", json!({})),
            ("&&a=1&", json!({"a": "1"})),
            ("a[b][c]=d", json!({"a": {"b": {"c": "d"}}})),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        let cases = [
            ("amount=1&amount=999", QsError::RepeatedKey("amount".into())),
            ("a[b]=1&a[b]=2", QsError::RepeatedKey("a[b]".into())),
            ("a[0]=1&a[0]=2", QsError::RepeatedKey("a[0]".into())),
            ("a=1&a[b]=2", QsError::Conflict("a[b]".into())),
            ("a[b]=2&a=1", QsError::Conflict("a".into())),
            ("a[]=1&a[0]=2", QsError::BadIndex("a[0]".into())),
            ("a[1]=1", QsError::BadIndex("a".into())),
            ("a[1]=x&a[0]=y", QsError::BadIndex("a".into())),
            ("a[01]=x", QsError::BadIndex("a[01]".into())),
            ("a]=1", QsError::BadKey("a]".into())),
            ("[a]=1", QsError::BadKey("[a]".into())),
            ("a[b=1", QsError::BadKey("a[b".into())),
            ("a[b]c=1", QsError::BadKey("a[b]c".into())),
            ("a=%zz", QsError::BadEncoding("%zz".into())),
            ("a=%ff", QsError::BadEncoding("%ff".into())),
            ("a[99999999]=1", QsError::BadIndex("a[99999999]".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = format!("a{}=1", "[x]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&deep).unwrap_err(), QsError::TooDeep);
        let many = (0..=MAX_PAIRS).map(|i| format!("k{i}=1")).collect::<Vec<_>>().join("&");
        assert_eq!(parse(&many).unwrap_err(), QsError::TooMany);
    }
}
