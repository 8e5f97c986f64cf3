//! `nexus-schema`: the schema rules shared by the control plane's registry and the
//! gateways' publish-time enforcement (sans-I/O).
//!
//! This module parses schema definitions, validates payloads against them and
//! decides whether a new schema version is compatible with the versions already
//! registered. It performs no I/O: no network, no files, no clocks. `$ref`s that
//! point outside the document are never fetched (the `jsonschema` crate is built
//! without its resolvers), so such a schema is rejected by [`ParsedSchema::parse`].
//!
//! # Formats
//!
//! * [`SchemaFormat::JsonSchema`] (`"json"`): the definition is a JSON Schema
//!   document as UTF-8 JSON text (draft 4, 6, 7, 2019-09 or 2020-12; the draft
//!   comes from `$schema`, 2020-12 when absent). The `message` argument of
//!   [`ParsedSchema::parse`] is ignored. Payloads are UTF-8 JSON documents.
//! * [`SchemaFormat::Protobuf`] (`"protobuf"`): the definition is an encoded
//!   `google.protobuf.FileDescriptorSet` (as written by `protoc
//!   --include_imports --descriptor_set_out`), and `message` names the
//!   fully-qualified message type of the payloads (e.g. `"shop.v1.Order"`; a
//!   leading `.` is accepted). Payloads are that message in binary wire format.
//!
//! Definitions larger than [`MAX_DEFINITION_SIZE`] (1 MiB) are refused with
//! [`SchemaError::TooLarge`] before anything is parsed.
//!
//! # Payload validation ([`ParsedSchema::validate`])
//!
//! * JSON: the payload must be JSON (else one violation at path `""` with the
//!   line and column) and valid under the schema; every violation reported by
//!   the validator is returned with its JSON pointer into the *payload*
//!   (e.g. `/items/0/price`).
//! * Protobuf: the payload must decode as the message (malformed wire data,
//!   wrong wire type for a known field, invalid UTF-8 in a `string`, ...). The
//!   violation path is the field path inside the payload, e.g. `items[1].sku`
//!   (`""` = the message itself); the checker narrows a decoding failure down
//!   to the innermost field whose bytes fail to decode. After decoding, two
//!   more rules apply: fields whose number the schema does not define are
//!   violations (path `<message path>.#<number>`, e.g. `items[0].#9`), because
//!   a producer that sends them did not use the registered schema; and proto2
//!   `required` fields must be present. Unknown enum *numbers* are accepted
//!   (proto3 enums are open). An empty payload is a valid message (all fields
//!   at their defaults).
//!
//! # Compatibility ([`check_compatibility`])
//!
//! Each check compares a *reader* schema with a *writer* schema:
//! BACKWARD checks reader = candidate against writer = previous version(s),
//! FORWARD checks reader = previous against writer = candidate, FULL does both.
//! Non-transitive modes compare with the latest previous version only (the
//! last element of `previous`), transitive modes with every previous version.
//! NONE always passes; an empty `previous` always passes. Schemas of different
//! formats are never compatible (one incompatibility, path `""`). Problems are
//! de-duplicated; when a problem comes from an older version in a transitive
//! mode, its reason says which (`"(against version index 0) ..."`).
//!
//! ## JSON Schema rules
//!
//! "The reader can read the writer's data" means every value valid under the
//! writer schema is valid under the reader schema. This is approximated
//! structurally, pair-wise from the root, path = JSON pointer into the
//! *schema* (e.g. `/properties/price`, `/properties/tags/items`):
//!
//! 1. Identical sub-schemas (without `$ref`) are compatible.
//! 2. Boolean schemas: a `true` reader accepts anything; a `false` writer
//!    produces nothing; a `false` reader breaks any other writer.
//! 3. `type` (string or array; absent = any type, unless `enum`/`const` imply
//!    it): every type the writer allows must be allowed by the reader.
//!    `integer` written is readable as `number` (widening is fine); `number`
//!    written is not readable as `integer`. Reasons: `type changed from number
//!    to string`, `type narrowed: writer allows [null, string], reader allows
//!    [string]`.
//! 4. `enum`/`const`: if the reader has one, every writer value must be in it
//!    (`enum value "x" removed`); a reader that adds an enum to a writer
//!    without one breaks. Values a writer enum allows must have a type the
//!    reader allows.
//! 5. Objects (when both sides allow objects):
//!    * a property required by the reader must be required by the writer
//!      (absent or optional in the writer breaks);
//!    * each property the writer declares is compared recursively with the
//!      reader's property of the same name; if the reader does not declare it,
//!      with the reader's `additionalProperties` (`false` = closed content
//!      model: the writer may send it, so this breaks);
//!    * open vs closed content model: a writer whose `additionalProperties`
//!      is absent/`true`/a schema (open) may send undeclared properties, so a
//!      reader with `additionalProperties: false` breaks, a reader
//!      `additionalProperties` schema is compared with the writer's, and a
//!      property declared (constrained) only by the reader breaks because the
//!      open writer may send it with any value. To add a property without
//!      breaking BACKWARD, the old schema must be closed or the new property
//!      must be unconstrained (`{}`).
//! 6. Arrays (when both sides allow arrays): the reader's `items` schema is
//!    compared with the writer's (absent = any). Tuple forms (`items` as an
//!    array, `prefixItems`) are only accepted when identical.
//! 7. Bounds: a reader `minimum`/`exclusiveMinimum`/`minLength`/`minItems`/
//!    `minProperties` larger than the writer's (or absent in the writer), or a
//!    `maximum`/`exclusiveMaximum`/`maxLength`/`maxItems`/`maxProperties`
//!    smaller (or absent in the writer), breaks; `pattern`, `format`,
//!    `multipleOf`, `uniqueItems` in the reader must be equal in the writer.
//! 8. `anyOf`/`oneOf` in the writer: every branch (merged with its sibling
//!    keywords) must be readable. `anyOf` in the reader: some branch must
//!    read the writer. Any other constraint keyword the reader has and the
//!    writer does not have identically (`allOf`, `not`, `if`, a reader
//!    `oneOf`, `patternProperties`, `dependentRequired`, ...) is reported as
//!    `not compared: ...` (conservative: it fails the check). Extra writer
//!    constraints only narrow the writer's values and are ignored.
//! 9. `$ref` to the same document (`#`, `#/...` JSON pointers, e.g.
//!    `#/$defs/Item`) is resolved and compared (recursive references are
//!    assumed compatible on the second visit); sibling keywords next to
//!    `$ref` are ignored. Any other `$ref` is reported as `not compared`.
//!
//! ## Protobuf rules (proto3 wire compatibility)
//!
//! The named message of each side is compared, then, recursively, every
//! message reachable through message-typed fields whose type name is the same
//! on both sides. Paths are field paths from the root message
//! (`items.sku`; `""` = the root message). Incompatible:
//!
//! 1. The root message name differs (message renamed or missing) — both ways.
//! 2. A field with the same name has a different number on the two sides
//!    (`field number changed from 2 to 5`) — both ways.
//! 3. A field number present on both sides whose type is not readable:
//!    * scalar kinds must be equal, except these widenings readable by the
//!      reader: `int32`->`int64`, `uint32`->`uint64`, `uint32`->`int64`,
//!      `sint32`->`sint64`, `string`->`bytes`, and `enum`<->`int32`/`int64`
//!      (same varint encoding); everything else, in particular any pair with
//!      a different wire type, breaks (e.g. `type changed from int32 to
//!      string`). The narrowing direction (`int64`->`int32`) breaks the side
//!      that narrows, so a widening passes BACKWARD but fails FORWARD;
//!    * message (or enum) fields must name the same type
//!      (`message type changed from shop.v1.A to shop.v1.B`);
//!    * `repeated` vs singular, or map vs not map, changed — both ways.
//! 4. Enums reached through compared fields: every value *number* the writer
//!    defines must exist in the reader's enum (`enum value CANCELLED = 3 of
//!    shop.v1.Status missing in reader`). So removing a value breaks
//!    BACKWARD, adding one breaks FORWARD. Renaming a value is fine.
//! 5. proto2 only: a field `required` by the reader that the writer does not
//!    have as `required`.
//!
//! Compatible: adding or removing fields (readers skip unknown numbers and
//! default missing ones), renaming a field while keeping its number,
//! `optional` <-> implicit presence, packed <-> unpacked, reserving numbers.
//! Not checked: moving fields into/out of `oneof`s, default values, options.

mod compat;
mod json;
mod protobuf;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use compat::check_compatibility;

/// Largest accepted schema definition, in bytes (1 MiB).
pub const MAX_DEFINITION_SIZE: usize = 1024 * 1024;

/// The kind of schema definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaFormat {
    /// A JSON Schema document; payloads are JSON. Text form `"json"`.
    JsonSchema,
    /// An encoded `FileDescriptorSet` plus a message name; payloads are binary
    /// protobuf. Text form `"protobuf"`.
    Protobuf,
}

impl SchemaFormat {
    /// The text form: `"json"` or `"protobuf"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaFormat::JsonSchema => "json",
            SchemaFormat::Protobuf => "protobuf",
        }
    }
}

impl fmt::Display for SchemaFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`SchemaFormat::from_str`] and [`CompatibilityMode::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; valid values: {}", valid.join(", "))]
pub struct ParseEnumError {
    /// What was being parsed ("schema format" or "compatibility mode").
    pub what: &'static str,
    /// The rejected input.
    pub given: String,
    /// Every accepted value, in canonical spelling.
    pub valid: Vec<&'static str>,
}

impl FromStr for SchemaFormat {
    type Err = ParseEnumError;

    /// Accepts `"json"` or `"protobuf"` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(SchemaFormat::JsonSchema),
            "protobuf" => Ok(SchemaFormat::Protobuf),
            _ => Err(ParseEnumError {
                what: "schema format",
                given: s.to_owned(),
                valid: vec!["json", "protobuf"],
            }),
        }
    }
}

/// How a new schema version must relate to the registered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompatibilityMode {
    /// No check.
    None,
    /// The candidate can read data written with the latest version.
    Backward,
    /// The candidate can read data written with every previous version.
    BackwardTransitive,
    /// The latest version can read data written with the candidate.
    Forward,
    /// Every previous version can read data written with the candidate.
    ForwardTransitive,
    /// Backward and forward with the latest version.
    Full,
    /// Backward and forward with every previous version.
    FullTransitive,
}

impl CompatibilityMode {
    /// All modes, in canonical order.
    pub const ALL: [CompatibilityMode; 7] = [
        CompatibilityMode::None,
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
        CompatibilityMode::Forward,
        CompatibilityMode::ForwardTransitive,
        CompatibilityMode::Full,
        CompatibilityMode::FullTransitive,
    ];

    /// The canonical upper-case form, e.g. `"BACKWARD_TRANSITIVE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::None => "NONE",
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the candidate must be readable by / read the previous versions'
    /// data (BACKWARD part).
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Backward
                | CompatibilityMode::BackwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether previous versions must read the candidate's data (FORWARD part).
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Forward
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether every previous version is compared, not just the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityMode {
    type Err = ParseEnumError;

    /// Accepts the seven modes case-insensitively, with `_` or `-` as the word
    /// separator (`"backward-transitive"`, `"FULL_TRANSITIVE"`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized = s.trim().to_ascii_uppercase().replace('-', "_");
        CompatibilityMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == normalized)
            .ok_or_else(|| ParseEnumError {
                what: "compatibility mode",
                given: s.to_owned(),
                valid: CompatibilityMode::ALL.iter().map(|m| m.as_str()).collect(),
            })
    }
}

/// Why a schema definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The JSON Schema definition is not JSON (positions are 1-based).
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    /// The definition is JSON but not a valid JSON Schema.
    #[error("invalid JSON Schema: {message}")]
    InvalidJsonSchema { message: String },
    /// The protobuf definition is not a usable encoded `FileDescriptorSet`.
    #[error("invalid protobuf FileDescriptorSet: {message}")]
    InvalidDescriptorSet { message: String },
    /// The named message is not in the descriptor set.
    #[error("message {name:?} not found in the descriptor set; available: [{}]", available.join(", "))]
    UnknownMessage {
        name: String,
        /// Fully-qualified names of every message in the set, sorted.
        available: Vec<String>,
    },
    /// A protobuf schema was given without a message name.
    #[error("a protobuf schema needs the fully-qualified name of the payload message")]
    MissingMessageName,
    /// The definition exceeds [`MAX_DEFINITION_SIZE`].
    #[error("schema definition is {size} bytes, larger than the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

/// One reason a payload is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// JSON pointer into the payload (JSON) or field path (protobuf,
    /// e.g. `items[1].sku`); `""` is the whole payload.
    pub path: String,
    /// Human-readable description.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(root): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// One reason two schemas are not compatible.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Incompatibility {
    /// JSON pointer into the schema (JSON, e.g. `/properties/price`) or field
    /// path from the root message (protobuf, e.g. `items.sku`); `""` = root.
    pub path: String,
    /// Human-readable description, e.g. `type changed from number to string`.
    pub reason: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(root): {}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl Incompatibility {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Incompatibility {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A parsed, ready-to-use schema. Cheap to clone (shared internally).
#[derive(Clone)]
pub struct ParsedSchema {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Json(Arc<json::JsonSchema>),
    Protobuf(Arc<protobuf::ProtoSchema>),
}

impl fmt::Debug for ParsedSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ParsedSchema");
        d.field("format", &self.format());
        if let Some(message) = self.message_name() {
            d.field("message", &message);
        }
        d.finish_non_exhaustive()
    }
}

impl ParsedSchema {
    /// Parses a definition.
    ///
    /// JSON Schema: `definition` is the document as UTF-8 JSON text and
    /// `message` is ignored. Protobuf: `definition` is an encoded
    /// `FileDescriptorSet` and `message` the fully-qualified name of the
    /// payload message (e.g. `"shop.v1.Order"`).
    pub fn parse(
        format: SchemaFormat,
        definition: &[u8],
        message: Option<&str>,
    ) -> Result<ParsedSchema, SchemaError> {
        if definition.len() > MAX_DEFINITION_SIZE {
            return Err(SchemaError::TooLarge {
                size: definition.len(),
                max: MAX_DEFINITION_SIZE,
            });
        }
        let inner = match format {
            SchemaFormat::JsonSchema => Inner::Json(Arc::new(json::JsonSchema::parse(definition)?)),
            SchemaFormat::Protobuf => {
                Inner::Protobuf(Arc::new(protobuf::ProtoSchema::parse(definition, message)?))
            }
        };
        Ok(ParsedSchema { inner })
    }

    /// The schema's format.
    pub fn format(&self) -> SchemaFormat {
        match self.inner {
            Inner::Json(_) => SchemaFormat::JsonSchema,
            Inner::Protobuf(_) => SchemaFormat::Protobuf,
        }
    }

    /// The fully-qualified payload message name (protobuf only).
    pub fn message_name(&self) -> Option<&str> {
        match &self.inner {
            Inner::Json(_) => None,
            Inner::Protobuf(p) => Some(p.message_name()),
        }
    }

    /// Validates one payload; `Err` lists every violation found (never empty).
    pub fn validate(&self, payload: &[u8]) -> Result<(), Vec<Violation>> {
        let violations = match &self.inner {
            Inner::Json(j) => j.validate(payload),
            Inner::Protobuf(p) => p.validate(payload),
        };
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}
