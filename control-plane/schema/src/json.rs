//! JSON Schema support: parsing (via the `jsonschema` crate, with meta-schema
//! validation), payload validation, and the structural reader/writer
//! compatibility check described in the parent module's documentation.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::{Incompatibility, SchemaError, Violation};

/// Most violations reported for one payload; the rest are summarised.
const MAX_VIOLATIONS: usize = 100;
/// Deepest schema nesting the compatibility checker descends into.
const MAX_DEPTH: usize = 256;
/// Most node comparisons one compatibility check may perform.
const MAX_STEPS: usize = 100_000;

/// A parsed JSON Schema document and its compiled validator.
pub(crate) struct JsonSchema {
    document: Value,
    validator: jsonschema::Validator,
}

impl JsonSchema {
    pub(crate) fn parse(definition: &[u8]) -> Result<JsonSchema, SchemaError> {
        let document: Value =
            serde_json::from_slice(definition).map_err(|e| SchemaError::InvalidJson {
                line: e.line(),
                column: e.column(),
                message: serde_message(&e),
            })?;
        let validator = jsonschema::validator_for(&document).map_err(|e| {
            let at = e.instance_path().as_str();
            let message = if at.is_empty() {
                e.to_string()
            } else {
                format!("{e} (at {at})")
            };
            SchemaError::InvalidJsonSchema { message }
        })?;
        Ok(JsonSchema {
            document,
            validator,
        })
    }

    pub(crate) fn validate(&self, payload: &[u8]) -> Vec<Violation> {
        let value: Value = match serde_json::from_slice(payload) {
            Ok(value) => value,
            Err(e) => {
                return vec![Violation {
                    path: String::new(),
                    message: format!(
                        "invalid JSON at line {}, column {}: {}",
                        e.line(),
                        e.column(),
                        serde_message(&e)
                    ),
                }];
            }
        };
        let mut violations = Vec::new();
        let mut omitted = 0usize;
        for error in self.validator.iter_errors(&value) {
            if violations.len() < MAX_VIOLATIONS {
                violations.push(Violation {
                    path: error.instance_path().as_str().to_owned(),
                    message: error.to_string(),
                });
            } else {
                omitted += 1;
            }
        }
        if omitted > 0 {
            violations.push(Violation {
                path: String::new(),
                message: format!("{omitted} more violations omitted"),
            });
        }
        violations
    }
}

/// The serde_json error text without its " at line L column C" suffix.
fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Problems preventing a reader using `reader` from accepting every value
/// valid under `writer`.
pub(crate) fn reader_reads_writer(
    reader: &JsonSchema,
    writer: &JsonSchema,
    reader_is_new: bool,
) -> Vec<Incompatibility> {
    if reader.document == writer.document {
        return Vec::new();
    }
    let mut checker = Checker {
        reader_root: &reader.document,
        writer_root: &writer.document,
        in_progress: HashSet::new(),
        reader_is_new,
        steps: 0,
        out: Vec::new(),
    };
    checker.compare(&reader.document, &writer.document, true, true, "", 0);
    let mut unique = Vec::new();
    for problem in checker.out {
        if !unique.contains(&problem) {
            unique.push(problem);
        }
    }
    unique
}

#[derive(Clone, Copy)]
enum Side {
    Reader,
    Writer,
}

struct Checker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    /// (reader node, writer node) addresses of document-backed pairs being
    /// compared; a pair met again while in progress is assumed compatible.
    in_progress: HashSet<(usize, usize)>,
    /// Whether the reader is the candidate (wording of "changed" reasons).
    reader_is_new: bool,
    steps: usize,
    out: Vec<Incompatibility>,
}

/// Keywords whose reader-side presence cannot be compared structurally: a
/// reader that has one the writer lacks (or has differently) is reported.
const UNSUPPORTED_READER_KEYWORDS: &[&str] = &[
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "minContains",
    "maxContains",
    "prefixItems",
    "additionalItems",
];

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn contains_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("$ref") || map.values().any(contains_ref),
        Value::Array(items) => items.iter().any(contains_ref),
        _ => false,
    }
}

fn json_type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) {
                "integer"
            } else {
                "number"
            }
        }
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The values an `enum` or `const` restricts a schema to.
fn fixed_values(schema: &Map<String, Value>) -> Option<Vec<&Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value]);
    }
    match schema.get("enum") {
        Some(Value::Array(values)) => Some(values.iter().collect()),
        _ => None,
    }
}

/// The explicit `type` set of a schema (`None` = no `type` keyword).
fn declared_types(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(BTreeSet::from([t.clone()])),
        Some(Value::Array(ts)) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// The types a writer may produce (`None` = any).
fn writer_types(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
    let declared = declared_types(schema);
    match fixed_values(schema) {
        Some(values) => {
            let from_values: BTreeSet<String> =
                values.iter().map(|v| json_type_of(v).to_owned()).collect();
            Some(match declared {
                Some(declared) => from_values
                    .into_iter()
                    .filter(|t| {
                        declared.contains(t) || (t == "integer" && declared.contains("number"))
                    })
                    .collect(),
                None => from_values,
            })
        }
        None => declared,
    }
}

fn type_allowed(t: &str, allowed: &BTreeSet<String>) -> bool {
    allowed.contains(t) || (t == "integer" && allowed.contains("number"))
}

fn may_be(types: &Option<BTreeSet<String>>, kind: &str) -> bool {
    match types {
        None => true,
        Some(set) => match kind {
            "number" => set.contains("number") || set.contains("integer"),
            _ => set.contains(kind),
        },
    }
}

fn list(set: &BTreeSet<String>) -> String {
    format!("[{}]", set.iter().cloned().collect::<Vec<_>>().join(", "))
}

/// A schema with no constraint keywords (annotations only) accepts anything.
fn is_unconstrained(schema: &Value) -> bool {
    const ANNOTATIONS: &[&str] = &[
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$id",
        "$schema",
        "$anchor",
    ];
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => true,
    }
}

/// A numeric bound: (value, exclusive).
type Bound = (f64, bool);

fn lower_bound(schema: &Map<String, Value>) -> Option<Bound> {
    let draft4_exclusive = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
    let inclusive = schema
        .get("minimum")
        .and_then(Value::as_f64)
        .map(|v| (v, draft4_exclusive));
    let exclusive = schema
        .get("exclusiveMinimum")
        .and_then(Value::as_f64)
        .map(|v| (v, true));
    match (inclusive, exclusive) {
        (Some(a), Some(b)) => Some(if b.0 >= a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn upper_bound(schema: &Map<String, Value>) -> Option<Bound> {
    let draft4_exclusive = schema.get("exclusiveMaximum") == Some(&Value::Bool(true));
    let inclusive = schema
        .get("maximum")
        .and_then(Value::as_f64)
        .map(|v| (v, draft4_exclusive));
    let exclusive = schema
        .get("exclusiveMaximum")
        .and_then(Value::as_f64)
        .map(|v| (v, true));
    match (inclusive, exclusive) {
        (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn describe_bound(bound: Option<Bound>, lower: bool) -> String {
    match bound {
        None => "none".to_owned(),
        Some((v, excl)) => match (lower, excl) {
            (true, false) => format!(">= {v}"),
            (true, true) => format!("> {v}"),
            (false, false) => format!("<= {v}"),
            (false, true) => format!("< {v}"),
        },
    }
}

impl<'a> Checker<'a> {
    fn report(&mut self, path: &str, reason: impl Into<String>) {
        self.out.push(Incompatibility::new(path, reason));
    }

    /// Runs `f` and returns what it reported, without keeping it.
    fn capture(&mut self, f: impl FnOnce(&mut Self)) -> Vec<Incompatibility> {
        let saved = std::mem::take(&mut self.out);
        f(self);
        std::mem::replace(&mut self.out, saved)
    }

    /// Follows same-document `$ref`s. `Err` carries the unresolvable ref.
    fn resolve<'v>(&self, side: Side, mut node: &'v Value) -> Result<(&'v Value, bool), String>
    where
        'a: 'v,
    {
        let root: &'a Value = match side {
            Side::Reader => self.reader_root,
            Side::Writer => self.writer_root,
        };
        let mut followed = false;
        for _ in 0..32 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
                return Ok((node, followed));
            };
            let target = if reference == "#" {
                Some(root)
            } else if let Some(pointer) = reference.strip_prefix('#') {
                if pointer.starts_with('/') {
                    root.pointer(&pointer.replace("%25", "%"))
                } else {
                    None
                }
            } else {
                None
            };
            match target {
                Some(target) => {
                    node = target;
                    followed = true;
                }
                None => return Err(reference.to_owned()),
            }
        }
        Err(node
            .get("$ref")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Compares a reader node with a writer node. `r_stable`/`w_stable` tell
    /// whether the node lives in its document (not a temporary merge).
    fn compare(
        &mut self,
        reader: &Value,
        writer: &Value,
        r_stable: bool,
        w_stable: bool,
        path: &str,
        depth: usize,
    ) {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            if self.steps == MAX_STEPS + 1 {
                self.report(path, "not compared: schemas too complex to compare");
            }
            return;
        }
        if depth > MAX_DEPTH {
            self.report(path, "not compared: schema nesting too deep");
            return;
        }
        let (reader, r_ref) = match self.resolve(Side::Reader, reader) {
            Ok(found) => found,
            Err(reference) => {
                self.report(
                    path,
                    format!(
                        "not compared: reader $ref {reference:?} is not a same-document reference"
                    ),
                );
                return;
            }
        };
        let (writer, w_ref) = match self.resolve(Side::Writer, writer) {
            Ok(found) => found,
            Err(reference) => {
                self.report(
                    path,
                    format!(
                        "not compared: writer $ref {reference:?} is not a same-document reference"
                    ),
                );
                return;
            }
        };
        if reader == writer && !contains_ref(reader) {
            return;
        }
        let tracked = (r_stable || r_ref) && (w_stable || w_ref);
        let key = (
            reader as *const Value as usize,
            writer as *const Value as usize,
        );
        if tracked && !self.in_progress.insert(key) {
            return;
        }
        self.compare_resolved(
            reader,
            writer,
            r_stable || r_ref,
            w_stable || w_ref,
            path,
            depth,
        );
        if tracked {
            self.in_progress.remove(&key);
        }
    }

    fn compare_resolved(
        &mut self,
        reader: &Value,
        writer: &Value,
        r_stable: bool,
        w_stable: bool,
        path: &str,
        depth: usize,
    ) {
        if reader == &Value::Bool(true) || writer == &Value::Bool(false) {
            return;
        }
        if reader == &Value::Bool(false) {
            self.report(path, "reader schema is false and accepts no value");
            return;
        }
        let empty = Map::new();
        let ro = reader.as_object().unwrap_or(&empty);
        let wo = writer.as_object().unwrap_or(&empty);

        // Writer unions: every branch must be readable.
        for keyword in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = wo.get(keyword) {
                let mut siblings = wo.clone();
                siblings.remove(keyword);
                for (i, branch) in branches.iter().enumerate() {
                    let branch = match self.resolve(Side::Writer, branch) {
                        Ok((branch, _)) => branch,
                        Err(reference) => {
                            self.report(
                                path,
                                format!("not compared: writer $ref {reference:?} is not a same-document reference"),
                            );
                            continue;
                        }
                    };
                    let merged = match branch {
                        Value::Bool(false) => continue,
                        Value::Object(extra) => {
                            let mut merged = siblings.clone();
                            for (k, v) in extra {
                                merged.insert(k.clone(), v.clone());
                            }
                            Value::Object(merged)
                        }
                        _ => Value::Object(siblings.clone()),
                    };
                    let found = self.capture(|c| {
                        c.compare(reader, &merged, r_stable, false, path, depth + 1);
                    });
                    for mut problem in found {
                        problem.reason = format!("writer {keyword} branch {i}: {}", problem.reason);
                        self.out.push(problem);
                    }
                }
                return;
            }
        }

        // Reader union: its siblings must read the writer, and so must one branch.
        if let Some(Value::Array(branches)) = ro.get("anyOf") {
            let mut siblings = ro.clone();
            siblings.remove("anyOf");
            let siblings = Value::Object(siblings);
            self.compare(&siblings, writer, false, w_stable, path, depth + 1);
            let mut closest: Option<Vec<Incompatibility>> = None;
            for branch in branches {
                let found = self.capture(|c| {
                    c.compare(branch, writer, r_stable, w_stable, path, depth + 1);
                });
                if found.is_empty() {
                    return;
                }
                if closest.as_ref().is_none_or(|c| found.len() < c.len()) {
                    closest = Some(found);
                }
            }
            let detail = closest
                .unwrap_or_default()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            self.report(
                path,
                format!(
                    "no branch of the reader's anyOf accepts every writer value (closest: {detail})"
                ),
            );
            return;
        }

        for keyword in UNSUPPORTED_READER_KEYWORDS {
            if let Some(value) = ro.get(*keyword)
                && wo.get(*keyword) != Some(value)
            {
                self.report(
                        &format!("{path}/{keyword}"),
                        format!("not compared: reader keyword {keyword} is not supported by the compatibility check unless identical in the writer"),
                    );
            }
        }

        // Types.
        let w_types = writer_types(wo);
        let r_types = declared_types(ro);
        if let Some(r_set) = &r_types {
            match &w_types {
                None => self.report(path, format!("type narrowed from any to {}", list(r_set))),
                Some(w_set) => {
                    let missing: BTreeSet<String> = w_set
                        .iter()
                        .filter(|t| !type_allowed(t, r_set))
                        .cloned()
                        .collect();
                    if !missing.is_empty() {
                        if w_set.len() == 1 && r_set.len() == 1 {
                            let w = w_set.iter().next().map(String::as_str).unwrap_or_default();
                            let r = r_set.iter().next().map(String::as_str).unwrap_or_default();
                            let (old, new) = if self.reader_is_new { (w, r) } else { (r, w) };
                            self.report(path, format!("type changed from {old} to {new}"));
                        } else {
                            self.report(
                                path,
                                format!(
                                    "type narrowed: writer allows {}, reader allows {} (missing {})",
                                    list(w_set),
                                    list(r_set),
                                    list(&missing)
                                ),
                            );
                        }
                    }
                }
            }
        }

        // Enumerations.
        let w_values = fixed_values(wo);
        if let Some(r_values) = fixed_values(ro) {
            match &w_values {
                Some(w_values) => {
                    for value in w_values {
                        if !r_values.contains(value) {
                            let change = if self.reader_is_new {
                                "removed"
                            } else {
                                "added (the old reader does not accept it)"
                            };
                            self.report(path, format!("enum value {value} {change}"));
                        }
                    }
                }
                None => self.report(
                    path,
                    "reader restricts values to an enum/const the writer does not have",
                ),
            }
        }
        if w_values.is_some() {
            // The writer's values are fixed and checked above.
            return;
        }

        let both = |kind: &str| may_be(&w_types, kind) && may_be(&r_types, kind);
        if both("object") {
            self.compare_objects(ro, wo, r_stable, w_stable, path, depth);
        }
        if both("array") {
            self.compare_arrays(ro, wo, r_stable, w_stable, path, depth);
        }
        if both("number") {
            let (rl, wl) = (lower_bound(ro), lower_bound(wo));
            if let Some(r) = rl {
                let ok = wl.is_some_and(|w| w.0 > r.0 || (w.0 == r.0 && (w.1 || !r.1)));
                if !ok {
                    self.report(
                        path,
                        format!(
                            "lower bound narrowed from {} to {}",
                            describe_bound(wl, true),
                            describe_bound(rl, true)
                        ),
                    );
                }
            }
            let (ru, wu) = (upper_bound(ro), upper_bound(wo));
            if let Some(r) = ru {
                let ok = wu.is_some_and(|w| w.0 < r.0 || (w.0 == r.0 && (w.1 || !r.1)));
                if !ok {
                    self.report(
                        path,
                        format!(
                            "upper bound narrowed from {} to {}",
                            describe_bound(wu, false),
                            describe_bound(ru, false)
                        ),
                    );
                }
            }
            if let Some(r) = ro.get("multipleOf").and_then(Value::as_f64) {
                let ok = wo
                    .get("multipleOf")
                    .and_then(Value::as_f64)
                    .is_some_and(|w| r != 0.0 && (w / r).fract() == 0.0);
                if !ok {
                    self.report(path, format!("reader requires multipleOf {r}"));
                }
            }
        }
        if both("string") {
            self.compare_counts(ro, wo, "minLength", "maxLength", path);
            for keyword in ["pattern", "format"] {
                if let Some(value) = ro.get(keyword)
                    && wo.get(keyword) != Some(value)
                {
                    self.report(path, format!("reader adds or changes {keyword} {value}"));
                }
            }
        }
        if both("array") {
            self.compare_counts(ro, wo, "minItems", "maxItems", path);
            if ro.get("uniqueItems") == Some(&Value::Bool(true))
                && wo.get("uniqueItems") != Some(&Value::Bool(true))
            {
                self.report(path, "reader requires uniqueItems");
            }
        }
        if both("object") {
            self.compare_counts(ro, wo, "minProperties", "maxProperties", path);
        }
    }

    fn compare_counts(
        &mut self,
        ro: &Map<String, Value>,
        wo: &Map<String, Value>,
        min: &str,
        max: &str,
        path: &str,
    ) {
        let get = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64);
        if let Some(r) = get(ro, min) {
            match get(wo, min) {
                Some(w) if w >= r => {}
                w => self.report(
                    path,
                    format!(
                        "{min} raised from {} to {r}",
                        w.map_or("none".to_owned(), |w| w.to_string())
                    ),
                ),
            }
        }
        if let Some(r) = get(ro, max) {
            match get(wo, max) {
                Some(w) if w <= r => {}
                w => self.report(
                    path,
                    format!(
                        "{max} lowered from {} to {r}",
                        w.map_or("none".to_owned(), |w| w.to_string())
                    ),
                ),
            }
        }
    }

    fn compare_objects(
        &mut self,
        ro: &Map<String, Value>,
        wo: &Map<String, Value>,
        r_stable: bool,
        w_stable: bool,
        path: &str,
        depth: usize,
    ) {
        let empty = Map::new();
        let w_props = wo
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let r_props = ro
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let names = |m: &Map<String, Value>| -> BTreeSet<String> {
            m.get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (w_required, r_required) = (names(wo), names(ro));
        for name in r_required.difference(&w_required) {
            let p = format!("{path}/properties/{}", escape(name));
            if w_props.contains_key(name) {
                self.report(
                    &p,
                    format!(
                        "property '{name}' is required by the reader but optional in the writer"
                    ),
                );
            } else {
                self.report(
                    &p,
                    format!(
                        "property '{name}' is required by the reader but not defined by the writer"
                    ),
                );
            }
        }

        let w_additional = wo.get("additionalProperties");
        let r_additional = ro.get("additionalProperties");
        let w_open =
            w_additional != Some(&Value::Bool(false)) || wo.contains_key("patternProperties");
        let r_closed = r_additional == Some(&Value::Bool(false));

        for (name, w_schema) in w_props {
            let p = format!("{path}/properties/{}", escape(name));
            if let Some(r_schema) = r_props.get(name) {
                self.compare(r_schema, w_schema, r_stable, w_stable, &p, depth + 1);
            } else if r_closed {
                if w_schema != &Value::Bool(false) {
                    self.report(
                        &p,
                        format!("property '{name}' may be sent by the writer but the reader is closed (additionalProperties: false)"),
                    );
                }
            } else if let Some(r_schema) = r_additional {
                self.compare(r_schema, w_schema, r_stable, w_stable, &p, depth + 1);
            }
        }

        for (name, r_schema) in r_props {
            if w_props.contains_key(name) {
                continue;
            }
            let p = format!("{path}/properties/{}", escape(name));
            match w_additional {
                Some(Value::Bool(false)) if !wo.contains_key("patternProperties") => {}
                Some(w_schema @ Value::Object(_)) if !wo.contains_key("patternProperties") => {
                    self.compare(r_schema, w_schema, r_stable, w_stable, &p, depth + 1);
                }
                _ => {
                    if !is_unconstrained(r_schema) {
                        self.report(
                            &p,
                            format!("property '{name}' is constrained by the reader but the writer's open content model (additionalProperties) allows any value for it"),
                        );
                    }
                }
            }
        }

        if w_open {
            let p = format!("{path}/additionalProperties");
            match r_additional {
                Some(Value::Bool(false)) => self.report(
                    &p,
                    "the writer allows additional properties (open content model) but the reader does not (additionalProperties: false)",
                ),
                Some(r_schema @ Value::Object(_)) => {
                    let w_schema = w_additional.unwrap_or(&Value::Bool(true));
                    self.compare(r_schema, w_schema, r_stable, w_stable, &p, depth + 1);
                }
                _ => {}
            }
        }
    }

    fn compare_arrays(
        &mut self,
        ro: &Map<String, Value>,
        wo: &Map<String, Value>,
        r_stable: bool,
        w_stable: bool,
        path: &str,
        depth: usize,
    ) {
        let p = format!("{path}/items");
        let (r_items, w_items) = (ro.get("items"), wo.get("items"));
        let tuple = |v: Option<&Value>| matches!(v, Some(Value::Array(_)));
        if tuple(r_items) || tuple(w_items) || wo.get("prefixItems") != ro.get("prefixItems") {
            if r_items != w_items || wo.get("prefixItems") != ro.get("prefixItems") {
                self.report(
                    &p,
                    "not compared: tuple-form items (items array / prefixItems) differ",
                );
            }
            return;
        }
        if let Some(r_items) = r_items {
            let w_items = w_items.unwrap_or(&Value::Bool(true));
            self.compare(r_items, w_items, r_stable, w_stable, &p, depth + 1);
        }
    }
}
