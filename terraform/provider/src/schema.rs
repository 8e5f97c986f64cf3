//! Attribute schemas of the provider's resources and data sources, and the generic planning
//! rules they share: defaults for optional attributes (so state always holds the live value and
//! a change made elsewhere shows as drift), computed attributes unknown until apply, and the
//! attributes whose change replaces the object.

use crate::tfplugin6 as tf;
use crate::value::{Obj, Val};

/// An attribute's Terraform type.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Num,
    Bool,
    ListStr,
    MapNum,
    /// A cty type written as its JSON encoding (nested objects of the data sources).
    Raw(&'static str),
}

impl Ty {
    fn json(&self) -> Vec<u8> {
        match self {
            Ty::Str => br#""string""#.to_vec(),
            Ty::Num => br#""number""#.to_vec(),
            Ty::Bool => br#""bool""#.to_vec(),
            Ty::ListStr => br#"["list","string"]"#.to_vec(),
            Ty::MapNum => br#"["map","number"]"#.to_vec(),
            Ty::Raw(s) => s.as_bytes().to_vec(),
        }
    }
}

/// How an attribute is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Required,
    /// Optional; when unset, planned as its default (which must then be `Some`).
    Optional,
    /// Optional; when unset, the control plane decides (known after apply, kept afterwards).
    OptionalComputed,
    /// Set by the provider only.
    Computed,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub mode: Mode,
    pub description: &'static str,
    pub sensitive: bool,
    /// A change replaces the object (the Admin API cannot change it in place).
    pub force_new: bool,
    /// Computed and changes with every update (e.g. a record version): unknown in plans that
    /// change the object.
    pub volatile: bool,
    pub default: Option<Val>,
}

impl Attr {
    fn new(name: &'static str, ty: Ty, mode: Mode, description: &'static str) -> Self {
        Attr {
            name,
            ty,
            mode,
            description,
            sensitive: false,
            force_new: false,
            volatile: false,
            default: None,
        }
    }
    pub fn required(name: &'static str, ty: Ty, d: &'static str) -> Self {
        Self::new(name, ty, Mode::Required, d)
    }
    pub fn optional(name: &'static str, ty: Ty, default: Val, d: &'static str) -> Self {
        let mut a = Self::new(name, ty, Mode::Optional, d);
        a.default = Some(default);
        a
    }
    pub fn optional_computed(name: &'static str, ty: Ty, d: &'static str) -> Self {
        Self::new(name, ty, Mode::OptionalComputed, d)
    }
    pub fn computed(name: &'static str, ty: Ty, d: &'static str) -> Self {
        Self::new(name, ty, Mode::Computed, d)
    }
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    pub fn force_new(mut self) -> Self {
        self.force_new = true;
        self
    }
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    fn to_proto(&self) -> tf::schema::Attribute {
        tf::schema::Attribute {
            name: self.name.into(),
            r#type: self.ty.json(),
            description: self.description.into(),
            required: self.mode == Mode::Required,
            // Attributes with a default are optional and computed: the planned default is a
            // value the provider chose, which Terraform accepts only from computed attributes.
            optional: matches!(self.mode, Mode::Optional | Mode::OptionalComputed),
            computed: matches!(
                self.mode,
                Mode::Optional | Mode::OptionalComputed | Mode::Computed
            ),
            sensitive: self.sensitive,
            ..Default::default()
        }
    }
}

/// The schema of one resource, data source or the provider itself.
pub fn to_proto(description: &str, attrs: &[Attr]) -> tf::Schema {
    tf::Schema {
        version: 0,
        block: Some(tf::schema::Block {
            version: 0,
            attributes: attrs.iter().map(Attr::to_proto).collect(),
            description: description.into(),
            ..Default::default()
        }),
    }
}

/// The generic plan: `proposed` (Terraform's merge of config and prior state) with defaults
/// for unset optional attributes, computed attributes unknown where they will change, and the
/// attributes that force a replacement. Returns the planned object and the replacing
/// attributes' names.
pub fn plan(
    attrs: &[Attr],
    prior: Option<&Obj>,
    proposed: &Obj,
    config: &Obj,
) -> (Obj, Vec<&'static str>) {
    let mut planned = proposed.clone();
    for a in attrs {
        let configured = config.get(a.name).is_some_and(|v| !v.is_null());
        match a.mode {
            Mode::Optional if !configured => {
                if let Some(d) = &a.default {
                    planned.insert(a.name.into(), d.clone());
                }
            }
            Mode::OptionalComputed | Mode::Computed if !configured && prior.is_none() => {
                planned.insert(a.name.into(), Val::Unknown);
            }
            _ => {}
        }
    }
    let mut replace = Vec::new();
    let mut changed = false;
    if let Some(prior) = prior {
        for a in attrs.iter().filter(|a| a.mode != Mode::Computed) {
            let (before, after) = (prior.get(a.name), planned.get(a.name));
            if before != after
                && after.is_some_and(|v| !v.is_null() || before.is_some_and(|b| !b.is_null()))
            {
                changed = true;
                if a.force_new {
                    replace.push(a.name);
                }
            }
        }
        if changed {
            for a in attrs.iter().filter(|a| a.volatile) {
                planned.insert(a.name.into(), Val::Unknown);
            }
        }
    }
    (planned, replace)
}

/// Every attribute of `attrs` present in `obj` (null when absent), nothing else.
pub fn complete(attrs: &[Attr], mut obj: Obj) -> Obj {
    let mut out = Obj::new();
    for a in attrs {
        out.insert(a.name.into(), obj.remove(a.name).unwrap_or(Val::Null));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Vec<Attr> {
        vec![
            Attr::computed("id", Ty::Str, ""),
            Attr::required("name", Ty::Str, "").force_new(),
            Attr::optional("policy", Ty::Str, Val::str("local_first"), ""),
            Attr::optional_computed("mode", Ty::Str, ""),
            Attr::computed("version", Ty::Num, "").volatile(),
        ]
    }

    fn obj(pairs: &[(&str, Val)]) -> Obj {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn create_fills_defaults_and_leaves_computed_unknown() {
        let config = obj(&[("name", Val::str("a")), ("policy", Val::Null)]);
        let (planned, replace) = plan(&attrs(), None, &config, &config);
        assert_eq!(planned["policy"], Val::str("local_first"));
        assert_eq!(planned["id"], Val::Unknown);
        assert_eq!(planned["mode"], Val::Unknown);
        assert_eq!(planned["version"], Val::Unknown);
        assert!(replace.is_empty());
    }

    #[test]
    fn no_change_plans_the_prior_state() {
        let prior = obj(&[
            ("id", Val::str("a")),
            ("name", Val::str("a")),
            ("policy", Val::str("local_first")),
            ("mode", Val::str("BACKWARD")),
            ("version", Val::Int(3)),
        ]);
        let config = obj(&[("name", Val::str("a"))]);
        let (planned, replace) = plan(&attrs(), Some(&prior), &prior, &config);
        assert_eq!(planned, prior);
        assert!(replace.is_empty());
    }

    #[test]
    fn drift_in_an_unset_optional_is_planned_back_to_its_default() {
        // The live policy was changed elsewhere; the configuration leaves it unset.
        let prior = obj(&[
            ("name", Val::str("a")),
            ("policy", Val::str("nearest")),
            ("version", Val::Int(3)),
        ]);
        let config = obj(&[("name", Val::str("a"))]);
        let (planned, replace) = plan(&attrs(), Some(&prior), &prior, &config);
        assert_eq!(planned["policy"], Val::str("local_first"));
        assert_eq!(
            planned["version"],
            Val::Unknown,
            "a change moves the version on"
        );
        assert!(replace.is_empty());
    }

    #[test]
    fn a_force_new_change_replaces() {
        let prior = obj(&[("name", Val::str("a")), ("version", Val::Int(1))]);
        let proposed = obj(&[("name", Val::str("b")), ("version", Val::Int(1))]);
        let (_, replace) = plan(&attrs(), Some(&prior), &proposed, &proposed);
        assert_eq!(replace, vec!["name"]);
    }

    #[test]
    fn complete_has_every_attribute_and_nothing_else() {
        let o = complete(
            &attrs(),
            obj(&[("name", Val::str("a")), ("stray", Val::Bool(true))]),
        );
        assert_eq!(o.len(), 5);
        assert_eq!(o["policy"], Val::Null);
        assert!(!o.contains_key("stray"));
    }
}
