//! Terraform values on the wire (`DynamicValue`): MessagePack as cty encodes it, with
//! unknown values as the extension type 0 (12 when Terraform adds refinements). [`Val`] is the decoded form the resources work
//! on; objects and maps are both string-keyed maps, and every object the provider returns
//! carries each attribute of its schema (null when unset).

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// One Terraform value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    /// Known only after apply.
    Unknown,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    Map(BTreeMap<String, Val>),
}

/// An object's attributes.
pub type Obj = BTreeMap<String, Val>;

impl Val {
    pub fn str(s: impl Into<String>) -> Val {
        Val::Str(s.into())
    }

    pub fn strings<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Val {
        Val::List(it.into_iter().map(|s| Val::Str(s.into())).collect())
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub fn is_known(&self) -> bool {
        match self {
            Val::Unknown => false,
            Val::List(l) => l.iter().all(Val::is_known),
            Val::Map(m) => m.values().all(Val::is_known),
            _ => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A list (or set) of strings; null is empty.
    pub fn as_strings(&self) -> Vec<String> {
        match self {
            Val::List(l) => l
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn from_rmpv(v: rmpv::Value) -> anyhow::Result<Val> {
    use rmpv::Value as M;
    Ok(match v {
        M::Nil => Val::Null,
        M::Boolean(b) => Val::Bool(b),
        M::Integer(i) => match i.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Float(i.as_f64().unwrap_or(f64::MAX)),
        },
        M::F32(f) => float(f as f64),
        M::F64(f) => float(f),
        M::String(s) => Val::Str(s.into_str().context("a string is not UTF-8")?),
        M::Binary(b) => Val::Str(String::from_utf8(b).context("a string is not UTF-8")?),
        M::Array(a) => Val::List(
            a.into_iter()
                .map(from_rmpv)
                .collect::<anyhow::Result<_>>()?,
        ),
        M::Map(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let k = match k {
                    M::String(s) => s.into_str().context("a map key is not UTF-8")?,
                    other => bail!("a map key is not a string: {other}"),
                };
                out.insert(k, from_rmpv(v)?);
            }
            Val::Map(out)
        }
        // 0: an unknown value; 12: an unknown value with refinements (e.g. "not null",
        // a string prefix), which the provider does not use.
        M::Ext(0 | 12, _) => Val::Unknown,
        M::Ext(t, _) => bail!("unexpected MessagePack extension type {t}"),
    })
}

/// Integral floats become integers so that `5` and `5.0` compare equal.
fn float(f: f64) -> Val {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Val::Int(f as i64)
    } else {
        Val::Float(f)
    }
}

fn to_rmpv(v: &Val) -> rmpv::Value {
    use rmpv::Value as M;
    match v {
        Val::Null => M::Nil,
        Val::Unknown => M::Ext(0, vec![0]),
        Val::Bool(b) => M::Boolean(*b),
        Val::Int(i) => M::from(*i),
        Val::Float(f) => M::F64(*f),
        Val::Str(s) => M::from(s.as_str()),
        Val::List(l) => M::Array(l.iter().map(to_rmpv).collect()),
        Val::Map(m) => M::Map(
            m.iter()
                .map(|(k, v)| (M::from(k.as_str()), to_rmpv(v)))
                .collect(),
        ),
    }
}

fn from_json(v: serde_json::Value) -> Val {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Val::Str(s),
        J::Array(a) => Val::List(a.into_iter().map(from_json).collect()),
        J::Object(o) => Val::Map(o.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    }
}

/// Decodes a `DynamicValue` (MessagePack, or JSON as in stored state).
pub fn decode(msgpack: &[u8], json: &[u8]) -> anyhow::Result<Val> {
    if !msgpack.is_empty() {
        let mut r = msgpack;
        let v = rmpv::decode::read_value(&mut r).context("cannot decode a MessagePack value")?;
        return from_rmpv(v);
    }
    if !json.is_empty() {
        let v: serde_json::Value =
            serde_json::from_slice(json).context("cannot decode a JSON value")?;
        return Ok(from_json(v));
    }
    Ok(Val::Null)
}

/// Encodes a value as MessagePack.
pub fn encode(v: &Val) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &to_rmpv(v));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_unknowns() {
        let mut o = Obj::new();
        o.insert("a".into(), Val::Unknown);
        o.insert("b".into(), Val::strings(["x", "y"]));
        o.insert("c".into(), Val::Int(7));
        o.insert("d".into(), Val::Null);
        let v = Val::Map(o);
        assert_eq!(decode(&encode(&v), &[]).unwrap(), v);
        assert!(!v.is_known());
        assert_eq!(
            decode(&[], br#"{"n":5.0,"s":"t"}"#).unwrap(),
            Val::Map(Obj::from([
                ("n".into(), Val::Int(5)),
                ("s".into(), Val::str("t"))
            ]))
        );
    }
}
