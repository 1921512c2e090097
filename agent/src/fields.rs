//! JSON objects as lists of fields, serialized by serde-json-core.
//!
//! A `#[derive(Serialize)]` struct is its own copy of the serializer's field code, inlined once
//! per field (the token body alone was 33 calls in the image). A [`Fields`] list is serialized
//! by one loop, the same code for every body: the token response, the JWT header and claims,
//! the error bodies and the OpenID documents. The output is what the derived impls wrote
//! (field order, skipped fields, arrays), byte for byte.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

/// A JSON value of a field.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// A string.
    Str(&'a str),
    /// A non-negative integer.
    Num(u64),
    /// A list of strings.
    Strs(&'a [&'a str]),
    /// A list of objects.
    Objs(&'a [Fields<'a>]),
    /// The field is left out (`skip_serializing_if = "Option::is_none"`).
    Skip,
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Value::Skip, Value::Str)
    }
}

/// A JSON object: its fields in order.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [(&'static str, Value<'a>)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("", self.0.len())?;
        for (name, value) in self.0 {
            if !matches!(value, Value::Skip) {
                st.serialize_field(name, value)?;
            }
        }
        st.end()
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Str(v) => s.serialize_str(v),
            Value::Num(n) => s.serialize_u64(n),
            Value::Strs(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                for v in list {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Objs(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                for v in list {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Skip => s.serialize_unit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_as_derived_structs() {
        #[derive(Serialize)]
        struct Inner<'a> {
            k: &'a str,
        }
        #[derive(Serialize)]
        struct Derived<'a> {
            a: &'a str,
            n: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            gone: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            kept: Option<&'a str>,
            list: [&'a str; 2],
            objs: [Inner<'a>; 1],
            esc: &'a str,
        }
        let d = Derived {
            a: "x",
            n: 1_700_000_000,
            gone: None,
            kept: Some("y"),
            list: ["p", "q"],
            objs: [Inner { k: "v" }],
            esc: "a\"b\\c\n",
        };
        let inner = [Fields(&[("k", Value::Str("v"))])];
        let f = Fields(&[
            ("a", Value::Str("x")),
            ("n", Value::Num(1_700_000_000)),
            ("gone", Value::Skip),
            ("kept", Some("y").into()),
            ("list", Value::Strs(&["p", "q"])),
            ("objs", Value::Objs(&inner)),
            ("esc", Value::Str("a\"b\\c\n")),
        ]);
        let (mut x, mut y) = ([0u8; 256], [0u8; 256]);
        let n = serde_json_core::to_slice(&d, &mut x).unwrap();
        let m = serde_json_core::to_slice(&f, &mut y).unwrap();
        assert_eq!(
            core::str::from_utf8(&x[..n]).unwrap(),
            core::str::from_utf8(&y[..m]).unwrap()
        );
        // Leading skipped fields leave no comma behind.
        let g = Fields(&[("a", Value::Skip), ("b", Value::Str("c"))]);
        let m = serde_json_core::to_slice(&g, &mut y).unwrap();
        assert_eq!(&y[..m], br#"{"b":"c"}"#);
    }
}
