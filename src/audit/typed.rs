//! Canonical JSON straight from a typed value: a serde `Serializer` that writes
//! RFC 8785 (JCS) text without building a `serde_json::Value` first.
//!
//! Sealing a record through a `Value` costs a map allocation per field and a
//! sort over the tree; this writes each member once and sorts member lists in
//! place. It covers what records hold (strings, integers, booleans, nulls,
//! sequences and maps with string keys). Anything else (a float, a non-string
//! key, a duplicate member) is [`Unsupported`], and the caller falls back to the
//! `Value` path, whose encoding is the reference: a property test checks that
//! both give the same bytes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;

use serde::ser::{self, Serialize};

use super::record::{utf16_cmp, write_string};

/// The value cannot be encoded here; use the `Value` path.
#[derive(Debug)]
pub struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not encodable on the typed path")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

/// One object member: the raw key, and where its canonical value text sits in the
/// text the members were encoded into (one buffer for all of them, not a `String`
/// each).
pub type Member = (Cow<'static, str>, Range<usize>);

/// The members of `v`, which must serialize as a map or a struct, unsorted; their
/// canonical value texts are written one after another into `text`.
pub fn members<T: Serialize + ?Sized>(v: &T, text: &mut String) -> Result<Vec<Member>, Unsupported> {
    let mut out = Vec::new();
    v.serialize(Writer { out: text, members: Some(&mut out) })?;
    Ok(out)
}

/// Writes `members` (their value texts in `text`) as one canonical object: sorted
/// by UTF-16 code units. Fails on a duplicate key (JSON objects in records never
/// repeat one). Returns the offset in `out` where the first member whose key sorts
/// after `mark` starts, or of the closing brace when none does.
pub fn write_object(members: &mut [Member], text: &str, out: &mut String, mark: &str) -> Result<usize, Unsupported> {
    if members.iter().all(|(k, _)| k.is_ascii()) {
        // UTF-16 order is byte order for ASCII: no per-comparison scan.
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    } else {
        members.sort_unstable_by(|a, b| utf16_cmp(&a.0, &b.0));
    }
    if members.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Unsupported);
    }
    out.push('{');
    let mut at = None;
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if at.is_none() && utf16_cmp(k, mark).is_gt() {
            at = Some(out.len());
        }
        write_string(k, out);
        out.push(':');
        out.push_str(text.get(v.clone()).ok_or(Unsupported)?);
    }
    let end = out.len();
    out.push('}');
    Ok(at.unwrap_or(end))
}

/// Writes scalars and sequences to `out`; an object either to `out` or, at the
/// top level of [`members`], into the member list.
struct Writer<'a> {
    out: &'a mut String,
    members: Option<&'a mut Vec<Member>>,
}

/// Enum variants with fields: records have none, so both serializers refuse them.
macro_rules! no_variants {
    () => {
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            Err(Unsupported)
        }
    };
}

/// Narrow integer methods of [`Writer`] that pass their value on widened.
macro_rules! widen {
    ($($($name:ident($ty:ty)),* => $wide:ident);*) => {
        $($(fn $name(self, v: $ty) -> Result<(), Unsupported> {
            self.$wide(v.into())
        })*)*
    };
}

impl<'a> Writer<'a> {
    fn integer(self, v: impl std::fmt::Display) -> Result<(), Unsupported> {
        self.scalar(|o| {
            let _ = write!(o, "{v}");
        })
    }

    fn scalar(self, f: impl FnOnce(&mut String)) -> Result<(), Unsupported> {
        if self.members.is_some() {
            return Err(Unsupported);
        }
        f(self.out);
        Ok(())
    }
}

struct Seq<'a> {
    out: &'a mut String,
    first: bool,
    close: char,
}

struct Obj<'a> {
    out: &'a mut String,
    into: Option<&'a mut Vec<Member>>,
    /// Where this object's member texts start in `out`.
    base: usize,
    members: Vec<Member>,
    key: Option<String>,
}

impl Obj<'_> {
    fn member(&mut self, key: Cow<'static, str>, v: &(impl Serialize + ?Sized)) -> Result<(), Unsupported> {
        let start = self.out.len();
        v.serialize(Writer { out: &mut *self.out, members: None })?;
        self.members.push((key, start..self.out.len()));
        Ok(())
    }

    fn finish(self) -> Result<(), Unsupported> {
        let Obj { out, into, base, mut members, .. } = self;
        match into {
            Some(list) => {
                list.append(&mut members);
                Ok(())
            }
            None => {
                // A nested object: its text replaces its members' texts in `out`.
                let mut obj = String::with_capacity(out.len() - base + 2 * members.len() + 16);
                write_object(&mut members, out, &mut obj, "")?;
                out.truncate(base);
                out.push_str(&obj);
                Ok(())
            }
        }
    }
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = ser::Impossible<(), Unsupported>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.scalar(|o| o.push_str(if v { "true" } else { "false" }))
    }
    widen! {
        serialize_i8(i8), serialize_i16(i16), serialize_i32(i32) => serialize_i64;
        serialize_u8(u8), serialize_u16(u16), serialize_u32(u32) => serialize_u64
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        self.integer(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        self.integer(v)
    }
    fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.scalar(|o| write_string(v, o))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.scalar(|o| o.push_str("null"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Unsupported> {
        if self.members.is_some() {
            return Err(Unsupported);
        }
        self.out.push('[');
        Ok(Seq { out: self.out, first: true, close: ']' })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Obj<'a>, Unsupported> {
        let base = self.out.len();
        Ok(Obj { out: self.out, into: self.members, base, members: Vec::with_capacity(len.unwrap_or(8)), key: None })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Obj<'a>, Unsupported> {
        self.serialize_map(Some(len))
    }
    no_variants!();
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        v.serialize(Writer { out: self.out, members: None })
    }
    fn close(self) -> Result<(), Unsupported> {
        self.out.push(self.close);
        Ok(())
    }
}

/// Sequences, tuples and tuple structs all write a JSON array.
macro_rules! array_like {
    ($($trait:ident :: $method:ident),*) => {
        $(impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
                self.element(v)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.close()
            }
        })*
    };
}

array_like!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field);

/// Map keys: strings only.
struct Key;

/// Methods of [`Key`] that refuse their value kind.
macro_rules! reject {
    ($($name:ident($ty:ty)),* $(,)?) => {
        $(fn $name(self, _: $ty) -> Result<String, Unsupported> {
            Err(Unsupported)
        })*
    };
}

impl ser::Serializer for Key {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<String, Unsupported>;
    type SerializeTuple = ser::Impossible<String, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Unsupported> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<String, Unsupported> {
        v.serialize(self)
    }
    reject! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
        serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64), serialize_f32(f32),
        serialize_f64(f64), serialize_char(char), serialize_bytes(&[u8]), serialize_unit_struct(&'static str)
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }
    no_variants!();
}

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Unsupported> {
        self.key = Some(k.serialize(Key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Unsupported> {
        let k = self.key.take().ok_or(Unsupported)?;
        self.member(Cow::Owned(k), v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeStruct for Obj<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Unsupported> {
        self.member(Cow::Borrowed(key), v)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}
