//! Protobuf support: descriptor-set parsing (`prost-types` + `prost-reflect`),
//! payload validation with `DynamicMessage` (with field paths for failures),
//! and the wire-compatibility check described in the parent module's
//! documentation.

use std::collections::{HashMap, HashSet};

use prost::Message as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, Value,
};

use super::{Incompatibility, SchemaError, Violation};

/// Most violations reported for one payload; the rest are summarised.
const MAX_VIOLATIONS: usize = 100;
/// Deepest nesting the decode-error locator descends into.
const MAX_LOCATE_DEPTH: usize = 100;

/// A descriptor pool and the payload message within it.
pub(crate) struct ProtoSchema {
    message: MessageDescriptor,
}

impl ProtoSchema {
    pub(crate) fn parse(
        definition: &[u8],
        message: Option<&str>,
    ) -> Result<ProtoSchema, SchemaError> {
        let name = message
            .map(|m| m.trim().trim_start_matches('.'))
            .filter(|m| !m.is_empty())
            .ok_or(SchemaError::MissingMessageName)?;
        let mut set = prost_types::FileDescriptorSet::decode(definition).map_err(|e| {
            SchemaError::InvalidDescriptorSet {
                message: format!("not an encoded FileDescriptorSet: {}", decode_text(&e)),
            }
        })?;
        if set.file.is_empty() {
            return Err(SchemaError::InvalidDescriptorSet {
                message: "the FileDescriptorSet contains no files".to_owned(),
            });
        }
        // prost-reflect 0.16 panics (index out of bounds while building the
        // error label) on a `syntax` other than proto2/proto3, so unsupported
        // syntaxes (e.g. "editions") are refused here; "" means proto2.
        for file in &mut set.file {
            match file.syntax.as_deref() {
                None | Some("proto2") | Some("proto3") => {}
                Some("") => file.syntax = None,
                Some(other) => {
                    return Err(SchemaError::InvalidDescriptorSet {
                        message: format!(
                            "file {:?} uses unsupported syntax {other:?} (only proto2 and proto3)",
                            file.name()
                        ),
                    });
                }
            }
        }
        let pool = DescriptorPool::from_file_descriptor_set(set).map_err(|e| {
            SchemaError::InvalidDescriptorSet {
                message: e.to_string(),
            }
        })?;
        let message = pool.get_message_by_name(name).ok_or_else(|| {
            let mut available: Vec<String> = pool
                .all_messages()
                .filter(|m| !m.is_map_entry())
                .map(|m| m.full_name().to_owned())
                .collect();
            available.sort();
            SchemaError::UnknownMessage {
                name: name.to_owned(),
                available,
            }
        })?;
        Ok(ProtoSchema { message })
    }

    pub(crate) fn message_name(&self) -> &str {
        self.message.full_name()
    }

    pub(crate) fn validate(&self, payload: &[u8]) -> Vec<Violation> {
        match DynamicMessage::decode(self.message.clone(), payload) {
            Ok(decoded) => {
                let mut out = Vec::new();
                check_decoded(&decoded, "", &mut out);
                if out.len() > MAX_VIOLATIONS {
                    let omitted = out.len() - MAX_VIOLATIONS;
                    out.truncate(MAX_VIOLATIONS);
                    out.push(Violation {
                        path: String::new(),
                        message: format!("{omitted} more violations omitted"),
                    });
                }
                out
            }
            Err(error) => {
                let located = locate(&self.message, payload, "", 0);
                vec![located.unwrap_or_else(|| Violation {
                    path: String::new(),
                    message: decode_text(&error),
                })]
            }
        }
    }
}

fn decode_text(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    text.strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text)
        .to_owned()
}

fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_owned()
    } else {
        format!("{path}.{segment}")
    }
}

fn map_key_text(key: &MapKey) -> String {
    match key {
        MapKey::Bool(v) => v.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(v) => format!("{v:?}"),
    }
}

/// Post-decoding rules: no unknown field numbers, proto2 `required` present.
fn check_decoded(message: &DynamicMessage, path: &str, out: &mut Vec<Violation>) {
    if out.len() > MAX_VIOLATIONS {
        return;
    }
    let descriptor = message.descriptor();
    for unknown in message.unknown_fields() {
        out.push(Violation {
            path: join(path, &format!("#{}", unknown.number())),
            message: format!(
                "field number {} is not defined in {}",
                unknown.number(),
                descriptor.full_name()
            ),
        });
    }
    for field in descriptor.fields() {
        if field.cardinality() == Cardinality::Required && !message.has_field(&field) {
            out.push(Violation {
                path: join(path, field.name()),
                message: format!("required field {} is missing", field.name()),
            });
        }
    }
    for (field, value) in message.fields() {
        let field_path = join(path, field.name());
        match value {
            Value::Message(inner) => check_decoded(inner, &field_path, out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        check_decoded(inner, &format!("{field_path}[{i}]"), out);
                    }
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    if let Value::Message(inner) = item {
                        check_decoded(inner, &format!("{field_path}[{}]", map_key_text(key)), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Finds the innermost field whose bytes fail to decode, walking the wire
/// records of `buf` (a `descriptor` message) one by one.
fn locate(
    descriptor: &MessageDescriptor,
    buf: &[u8],
    path: &str,
    depth: usize,
) -> Option<Violation> {
    if depth > MAX_LOCATE_DEPTH {
        return None;
    }
    let mut rest = buf;
    let mut seen: HashMap<u32, usize> = HashMap::new();
    while !rest.is_empty() {
        let offset = buf.len() - rest.len();
        let record_start = rest;
        let (number, wire_type) = match decode_key(&mut rest) {
            Ok(key) => key,
            Err(e) => {
                return Some(Violation {
                    path: path.to_owned(),
                    message: format!("malformed field key at byte {offset}: {}", decode_text(&e)),
                });
            }
        };
        let field = descriptor.get_field(number);
        let field_path = match &field {
            Some(f) if f.is_list() && matches!(f.kind(), Kind::Message(_)) => {
                let index = seen.entry(number).or_default();
                let p = format!("{}[{index}]", join(path, f.name()));
                *index += 1;
                p
            }
            Some(f) => join(path, f.name()),
            None => join(path, &format!("#{number}")),
        };
        let after_key = rest;
        if let Err(e) = skip_field(wire_type, number, &mut rest, DecodeContext::default()) {
            return Some(Violation {
                path: field_path,
                message: format!("malformed value at byte {offset}: {}", decode_text(&e)),
            });
        }
        let record = &record_start[..record_start.len() - rest.len()];
        let Some(field) = field else { continue };
        if let Err(e) = DynamicMessage::decode(descriptor.clone(), record) {
            if let Some(found) = locate_inner(&field, wire_type, after_key, &field_path, depth) {
                return Some(found);
            }
            return Some(Violation {
                path: field_path,
                message: format!(
                    "{} (field {} at byte {offset})",
                    decode_text(&e),
                    field.name()
                ),
            });
        }
    }
    None
}

fn locate_inner(
    field: &FieldDescriptor,
    wire_type: WireType,
    mut after_key: &[u8],
    field_path: &str,
    depth: usize,
) -> Option<Violation> {
    let Kind::Message(inner) = field.kind() else {
        return None;
    };
    if wire_type != WireType::LengthDelimited || field.is_map() || field.is_group() {
        return None;
    }
    let len = usize::try_from(decode_varint(&mut after_key).ok()?).ok()?;
    let body = after_key.get(..len)?;
    locate(&inner, body, field_path, depth + 1)
}

/// Problems preventing a reader using `reader` from decoding data written
/// with `writer`.
pub(crate) fn reader_reads_writer(
    reader: &ProtoSchema,
    writer: &ProtoSchema,
    reader_is_new: bool,
) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader_is_new,
        visited: HashSet::new(),
        out: Vec::new(),
    };
    if reader.message.full_name() != writer.message.full_name() {
        let (old, new) = checker.old_new(reader.message.full_name(), writer.message.full_name());
        checker.report("", format!("message type changed from {old} to {new}"));
    } else {
        checker.compare_message(&reader.message, &writer.message, "");
    }
    checker.out
}

struct Checker {
    reader_is_new: bool,
    /// Message and enum full names already compared.
    visited: HashSet<String>,
    out: Vec<Incompatibility>,
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".to_owned(),
        Kind::Float => "float".to_owned(),
        Kind::Int32 => "int32".to_owned(),
        Kind::Int64 => "int64".to_owned(),
        Kind::Uint32 => "uint32".to_owned(),
        Kind::Uint64 => "uint64".to_owned(),
        Kind::Sint32 => "sint32".to_owned(),
        Kind::Sint64 => "sint64".to_owned(),
        Kind::Fixed32 => "fixed32".to_owned(),
        Kind::Fixed64 => "fixed64".to_owned(),
        Kind::Sfixed32 => "sfixed32".to_owned(),
        Kind::Sfixed64 => "sfixed64".to_owned(),
        Kind::Bool => "bool".to_owned(),
        Kind::String => "string".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
    }
}

/// Whether scalar `writer` data is readable as scalar `reader` (documented
/// widenings; identical kinds are handled by the caller).
fn scalar_readable(writer: &Kind, reader: &Kind) -> bool {
    matches!(
        (writer, reader),
        (Kind::Int32, Kind::Int64)
            | (Kind::Uint32, Kind::Uint64)
            | (Kind::Uint32, Kind::Int64)
            | (Kind::Sint32, Kind::Sint64)
            | (Kind::String, Kind::Bytes)
            | (Kind::Enum(_), Kind::Int32 | Kind::Int64)
            | (Kind::Int32 | Kind::Int64, Kind::Enum(_))
    )
}

impl Checker {
    fn report(&mut self, path: &str, reason: impl Into<String>) {
        self.out.push(Incompatibility::new(path, reason));
    }

    /// Orders a (reader, writer) pair of descriptions as (old, new).
    fn old_new<T>(&self, reader: T, writer: T) -> (T, T) {
        if self.reader_is_new {
            (writer, reader)
        } else {
            (reader, writer)
        }
    }

    fn compare_message(
        &mut self,
        reader: &MessageDescriptor,
        writer: &MessageDescriptor,
        path: &str,
    ) {
        if !self
            .visited
            .insert(format!("message {}", reader.full_name()))
        {
            return;
        }
        for w_field in writer.fields() {
            if let Some(r_field) = reader.get_field_by_name(w_field.name())
                && r_field.number() != w_field.number()
            {
                let (old, new) = self.old_new(r_field.number(), w_field.number());
                self.report(
                    &join(path, w_field.name()),
                    format!("field number changed from {old} to {new}"),
                );
            }
        }
        for w_field in writer.fields() {
            if let Some(r_field) = reader.get_field(w_field.number()) {
                // Paths use the new schema's field name.
                let (_, new) = self.old_new(&r_field, &w_field);
                let field_path = join(path, new.name());
                self.compare_field(&r_field, &w_field, &field_path);
            }
        }
        for r_field in reader.fields() {
            if r_field.cardinality() != Cardinality::Required {
                continue;
            }
            let writer_requires = writer
                .get_field(r_field.number())
                .is_some_and(|w| w.cardinality() == Cardinality::Required);
            if !writer_requires {
                self.report(
                    &join(path, r_field.name()),
                    format!(
                        "field {} is required by the reader but not by the writer",
                        r_field.name()
                    ),
                );
            }
        }
    }

    fn compare_field(&mut self, reader: &FieldDescriptor, writer: &FieldDescriptor, path: &str) {
        let shape = |f: &FieldDescriptor| {
            if f.is_map() {
                "map"
            } else if f.is_list() {
                "repeated"
            } else {
                "singular"
            }
        };
        let (r_shape, w_shape) = (shape(reader), shape(writer));
        if r_shape != w_shape {
            let (old, new) = self.old_new(r_shape, w_shape);
            self.report(path, format!("field changed from {old} to {new}"));
            return;
        }
        if reader.is_map() {
            if let (Kind::Message(r_entry), Kind::Message(w_entry)) = (reader.kind(), writer.kind())
            {
                let (r_key, w_key) = (r_entry.map_entry_key_field(), w_entry.map_entry_key_field());
                self.compare_kind(&r_key.kind(), &w_key.kind(), &format!("{path}[key]"));
                let (r_value, w_value) = (
                    r_entry.map_entry_value_field(),
                    w_entry.map_entry_value_field(),
                );
                self.compare_kind(&r_value.kind(), &w_value.kind(), &format!("{path}[value]"));
            }
            return;
        }
        self.compare_kind(&reader.kind(), &writer.kind(), path);
    }

    fn compare_kind(&mut self, reader: &Kind, writer: &Kind, path: &str) {
        match (reader, writer) {
            (Kind::Message(r), Kind::Message(w)) if r.full_name() == w.full_name() => {
                self.compare_message(r, w, path);
            }
            (Kind::Enum(r), Kind::Enum(w)) if r.full_name() == w.full_name() => {
                self.compare_enum(r, w, path);
            }
            (Kind::Message(_), Kind::Message(_)) => {
                let (old, new) = self.old_new(kind_name(reader), kind_name(writer));
                self.report(path, format!("message type changed from {old} to {new}"));
            }
            (Kind::Enum(_), Kind::Enum(_)) => {
                let (old, new) = self.old_new(kind_name(reader), kind_name(writer));
                self.report(path, format!("enum type changed from {old} to {new}"));
            }
            _ => {
                if kind_name(reader) != kind_name(writer) && !scalar_readable(writer, reader) {
                    let (old, new) = self.old_new(kind_name(reader), kind_name(writer));
                    self.report(path, format!("type changed from {old} to {new}"));
                }
            }
        }
    }

    fn compare_enum(&mut self, reader: &EnumDescriptor, writer: &EnumDescriptor, path: &str) {
        if !self.visited.insert(format!("enum {}", reader.full_name())) {
            return;
        }
        for value in writer.values() {
            if reader.get_value(value.number()).is_none() {
                let change = if self.reader_is_new {
                    "removed"
                } else {
                    "added (the old reader lacks it)"
                };
                self.report(
                    path,
                    format!(
                        "enum value {} = {} of {} {change}",
                        value.name(),
                        value.number(),
                        writer.full_name()
                    ),
                );
            }
        }
    }
}
