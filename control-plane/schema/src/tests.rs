//! Unit tests for the schema module: enum parsing, bad inputs, payload
//! validation, every compatibility mode and rule, and no-panic fuzzing.

use super::*;
use serde_json::json;

fn js(value: serde_json::Value) -> ParsedSchema {
    ParsedSchema::parse(SchemaFormat::JsonSchema, value.to_string().as_bytes(), None)
        .expect("valid JSON Schema")
}

fn check(
    mode: CompatibilityMode,
    candidate: &ParsedSchema,
    previous: &[ParsedSchema],
) -> Vec<Incompatibility> {
    match check_compatibility(mode, candidate, previous) {
        Ok(()) => Vec::new(),
        Err(problems) => {
            assert!(!problems.is_empty(), "Err must not be empty");
            problems
        }
    }
}

fn has(problems: &[Incompatibility], path: &str, reason_part: &str) -> bool {
    problems
        .iter()
        .any(|p| p.path == path && p.reason.contains(reason_part))
}

use CompatibilityMode::{
    Backward, BackwardTransitive, Forward, ForwardTransitive, Full, FullTransitive,
};

mod enums {
    use super::*;

    #[test]
    fn format_round_trip() {
        assert_eq!(
            "json".parse::<SchemaFormat>().unwrap(),
            SchemaFormat::JsonSchema
        );
        assert_eq!(
            "Protobuf".parse::<SchemaFormat>().unwrap(),
            SchemaFormat::Protobuf
        );
        assert_eq!(SchemaFormat::JsonSchema.to_string(), "json");
        assert_eq!(SchemaFormat::Protobuf.to_string(), "protobuf");
        let err = "avro".parse::<SchemaFormat>().unwrap_err();
        assert!(err.to_string().contains("json, protobuf"), "{err}");
    }

    #[test]
    fn mode_round_trip_and_spellings() {
        for mode in CompatibilityMode::ALL {
            assert_eq!(mode.to_string().parse::<CompatibilityMode>().unwrap(), mode);
            let lower = mode.to_string().to_lowercase().replace('_', "-");
            assert_eq!(lower.parse::<CompatibilityMode>().unwrap(), mode);
        }
        assert_eq!(
            "backward_transitive".parse::<CompatibilityMode>().unwrap(),
            BackwardTransitive
        );
        assert_eq!(
            "Full-Transitive".parse::<CompatibilityMode>().unwrap(),
            FullTransitive
        );
        assert_eq!(ForwardTransitive.to_string(), "FORWARD_TRANSITIVE");
    }

    #[test]
    fn unknown_mode_lists_all_seven() {
        let err = "SIDEWAYS".parse::<CompatibilityMode>().unwrap_err();
        let text = err.to_string();
        for mode in CompatibilityMode::ALL {
            assert!(text.contains(mode.as_str()), "{text}");
        }
        assert_eq!(err.valid.len(), 7);
    }

    #[test]
    fn parsed_schema_is_clone_send_sync() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<ParsedSchema>();
        assert_traits::<SchemaError>();
        let schema = js(json!({"type": "string"}));
        let copy = schema.clone();
        std::thread::spawn(move || copy.validate(b"\"x\""))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(schema.format(), SchemaFormat::JsonSchema);
        assert_eq!(schema.message_name(), None);
    }

    #[test]
    fn findings_serialize_as_json() {
        let v = Violation {
            path: "/a".into(),
            message: "bad".into(),
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            json!({"path": "/a", "message": "bad"})
        );
        let i = Incompatibility::new("/properties/price", "type changed from number to string");
        assert_eq!(
            serde_json::to_value(&i).unwrap(),
            json!({"path": "/properties/price", "reason": "type changed from number to string"})
        );
    }
}

mod json_inputs {
    use super::*;

    #[test]
    fn malformed_json_reports_line_and_column() {
        let text = b"{\n  \"type\": \"object\",\n  oops\n}";
        match ParsedSchema::parse(SchemaFormat::JsonSchema, text, None) {
            Err(SchemaError::InvalidJson {
                line,
                column,
                message,
            }) => {
                assert_eq!(line, 3);
                assert_eq!(column, 3);
                assert!(!message.contains("line 3"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let err =
            ParsedSchema::parse(SchemaFormat::JsonSchema, b"{\"a\": \"\xff\"}", None).unwrap_err();
        assert!(matches!(err, SchemaError::InvalidJson { .. }), "{err:?}");
    }

    #[test]
    fn not_a_json_schema() {
        for doc in [
            json!({"type": 12}),
            json!({"minLength": -1}),
            json!(5),
            json!({"required": "id"}),
        ] {
            let err =
                ParsedSchema::parse(SchemaFormat::JsonSchema, doc.to_string().as_bytes(), None)
                    .unwrap_err();
            assert!(
                matches!(err, SchemaError::InvalidJsonSchema { .. }),
                "{doc}: {err:?}"
            );
        }
    }

    #[test]
    fn remote_refs_are_not_fetched() {
        let doc = json!({"$ref": "https://example.com/schemas/order.json"});
        let err = ParsedSchema::parse(SchemaFormat::JsonSchema, doc.to_string().as_bytes(), None)
            .unwrap_err();
        assert!(
            matches!(err, SchemaError::InvalidJsonSchema { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn oversized_definitions() {
        let mut big = b"{\"description\": \"".to_vec();
        big.resize(MAX_DEFINITION_SIZE + 10, b'a');
        let err = ParsedSchema::parse(SchemaFormat::JsonSchema, &big, None).unwrap_err();
        assert_eq!(
            err,
            SchemaError::TooLarge {
                size: MAX_DEFINITION_SIZE + 10,
                max: MAX_DEFINITION_SIZE
            }
        );
        let err = ParsedSchema::parse(SchemaFormat::Protobuf, &big, Some("a.B")).unwrap_err();
        assert!(matches!(err, SchemaError::TooLarge { .. }));
    }

    #[test]
    fn drafts_7_and_2020_12() {
        js(
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                  "definitions": {"a": {"type": "string"}}, "properties": {"a": {"$ref": "#/definitions/a"}}}),
        );
        js(
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                  "$defs": {"a": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/a"}}}),
        );
        js(json!(true));
    }
}

mod json_validation {
    use super::*;

    fn order() -> ParsedSchema {
        js(json!({
            "type": "object",
            "required": ["id", "items"],
            "properties": {
                "id": {"type": "string"},
                "items": {"type": "array", "items": {
                    "type": "object", "required": ["price"],
                    "properties": {"price": {"type": "number", "minimum": 0}}
                }}
            },
            "additionalProperties": false
        }))
    }

    #[test]
    fn valid_payload() {
        order()
            .validate(br#"{"id": "o1", "items": [{"price": 1.5}]}"#)
            .unwrap();
    }

    #[test]
    fn violations_have_pointer_paths() {
        let errors = order()
            .validate(br#"{"id": 7, "items": [{"price": 1}, {"price": -2}], "extra": true}"#)
            .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/id"), "{errors:?}");
        assert!(paths.contains(&"/items/1/price"), "{errors:?}");
        assert!(
            paths.contains(&""),
            "additionalProperties violation at root: {errors:?}"
        );
        assert!(errors.iter().all(|v| !v.message.is_empty()));
    }

    #[test]
    fn missing_required_property() {
        let errors = order().validate(br#"{"id": "o1"}"#).unwrap_err();
        assert!(
            errors.iter().any(|v| v.message.contains("items")),
            "{errors:?}"
        );
    }

    #[test]
    fn payload_that_is_not_json() {
        let errors = order().validate(b"{\"id\": \n oops}").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "");
        assert!(errors[0].message.contains("line 2, column 2"), "{errors:?}");
    }
}

mod json_compat {
    use super::*;

    fn obj(props: serde_json::Value) -> serde_json::Value {
        json!({"type": "object", "properties": props})
    }

    #[test]
    fn none_and_empty_history_always_pass() {
        let a = js(json!({"type": "string"}));
        let b = js(json!({"type": "integer"}));
        assert!(check(CompatibilityMode::None, &a, std::slice::from_ref(&b)).is_empty());
        for mode in CompatibilityMode::ALL {
            assert!(check(mode, &a, &[]).is_empty());
        }
    }

    #[test]
    fn identical_schemas_pass_every_mode() {
        let a = js(obj(json!({"price": {"type": "number"}})));
        for mode in CompatibilityMode::ALL {
            assert!(
                check(mode, &a, &[a.clone(), a.clone()]).is_empty(),
                "{mode}"
            );
        }
    }

    #[test]
    fn type_change_breaks_both_directions() {
        let old = js(obj(json!({"price": {"type": "number"}})));
        let new = js(obj(json!({"price": {"type": "string"}})));
        for mode in [Backward, Forward, Full] {
            let problems = check(mode, &new, std::slice::from_ref(&old));
            assert!(
                has(
                    &problems,
                    "/properties/price",
                    "type changed from number to string"
                ),
                "{mode}: {problems:?}"
            );
        }
        assert_eq!(
            check(Full, &new, std::slice::from_ref(&old)).len(),
            1,
            "deduplicated"
        );
    }

    #[test]
    fn integer_to_number_widening() {
        let old = js(obj(json!({"n": {"type": "integer"}})));
        let new = js(obj(json!({"n": {"type": "number"}})));
        assert!(check(Backward, &new, std::slice::from_ref(&old)).is_empty());
        let problems = check(Forward, &new, std::slice::from_ref(&old));
        assert!(
            has(
                &problems,
                "/properties/n",
                "type changed from integer to number"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn nullable_narrowed() {
        let old = js(obj(json!({"note": {"type": ["string", "null"]}})));
        let new = js(obj(json!({"note": {"type": "string"}})));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/properties/note", "missing [null]"),
            "{problems:?}"
        );
        assert!(check(Forward, &new, std::slice::from_ref(&old)).is_empty());
    }

    #[test]
    fn required_added_by_reader() {
        let old = js(obj(json!({"id": {"type": "string"}})));
        let new = js(
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
        );
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(
                &problems,
                "/properties/id",
                "required by the reader but optional"
            ),
            "{problems:?}"
        );
        assert!(check(Forward, &new, std::slice::from_ref(&old)).is_empty());
        let absent = js(json!({"type": "object", "required": ["id"]}));
        let problems = check(Backward, &absent, &[js(json!({"type": "object"}))]);
        assert!(
            has(&problems, "/properties/id", "not defined by the writer"),
            "{problems:?}"
        );
    }

    #[test]
    fn enum_values_removed_and_added() {
        let old = js(obj(json!({"s": {"enum": ["a", "b"]}})));
        let fewer = js(obj(json!({"s": {"enum": ["a"]}})));
        let more = js(obj(json!({"s": {"enum": ["a", "b", "c"]}})));
        let problems = check(Backward, &fewer, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/properties/s", "enum value \"b\" removed"),
            "{problems:?}"
        );
        assert!(check(Forward, &fewer, std::slice::from_ref(&old)).is_empty());
        assert!(check(Backward, &more, std::slice::from_ref(&old)).is_empty());
        let problems = check(Forward, &more, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/properties/s", "enum value \"c\" added"),
            "{problems:?}"
        );
        let problems = check(Backward, &old, &[js(obj(json!({"s": {"type": "string"}})))]);
        assert!(
            has(&problems, "/properties/s", "enum/const"),
            "{problems:?}"
        );
    }

    #[test]
    fn closed_reader_rejects_writer_properties() {
        let old = js(
            json!({"type": "object", "properties": {"a": {}, "b": {}}, "additionalProperties": false}),
        );
        let new =
            js(json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false}));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/properties/b", "reader is closed"),
            "{problems:?}"
        );
        assert!(check(Forward, &new, std::slice::from_ref(&old)).is_empty());
    }

    #[test]
    fn open_writer_closed_reader() {
        let old = js(json!({"type": "object", "properties": {"a": {}}}));
        let new =
            js(json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false}));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/additionalProperties", "open content model"),
            "{problems:?}"
        );
        assert!(check(Forward, &new, std::slice::from_ref(&old)).is_empty());
    }

    #[test]
    fn property_added_to_open_and_closed_content_models() {
        let open_old = js(obj(json!({"a": {"type": "string"}})));
        let open_new = js(obj(
            json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
        ));
        let problems = check(Backward, &open_new, std::slice::from_ref(&open_old));
        assert!(
            has(&problems, "/properties/b", "open content model"),
            "{problems:?}"
        );
        // An unconstrained new property is fine.
        let loose = js(obj(
            json!({"a": {"type": "string"}, "b": {"description": "anything"}}),
        ));
        assert!(check(Full, &loose, std::slice::from_ref(&open_old)).is_empty());

        let closed_old = js(
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
        );
        let closed_new = js(
            json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                                   "additionalProperties": false}),
        );
        assert!(check(Backward, &closed_new, std::slice::from_ref(&closed_old)).is_empty());
        let problems = check(Forward, &closed_new, std::slice::from_ref(&closed_old));
        assert!(
            has(&problems, "/properties/b", "reader is closed"),
            "{problems:?}"
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let old = js(obj(json!({
            "customer": {"type": "object", "properties": {"email": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}}
        })));
        let new = js(obj(json!({
            "customer": {"type": "object", "properties": {"email": {"type": "integer"}}},
            "tags": {"type": "array", "items": {"type": "integer"}}
        })));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(
                &problems,
                "/properties/customer/properties/email",
                "type changed from string to integer"
            ),
            "{problems:?}"
        );
        assert!(
            has(
                &problems,
                "/properties/tags/items",
                "type changed from string to integer"
            ),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn property_names_are_escaped() {
        let old = js(obj(json!({"a/b~c": {"type": "string"}})));
        let new = js(obj(json!({"a/b~c": {"type": "boolean"}})));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "/properties/a~1b~0c", "type changed"),
            "{problems:?}"
        );
    }

    #[test]
    fn same_document_refs_are_followed() {
        let old = js(
            json!({"$defs": {"item": {"type": "object", "properties": {"sku": {"type": "string"}}}},
                            "type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}}),
        );
        let new = js(
            json!({"$defs": {"item": {"type": "object", "properties": {"sku": {"type": "integer"}}}},
                            "type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}}),
        );
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(
                &problems,
                "/properties/item/properties/sku",
                "type changed from string to integer"
            ),
            "{problems:?}"
        );
        // Inlining a definition is fine.
        let inlined = js(
            json!({"type": "object", "properties": {"item": {"type": "object", "properties": {"sku": {"type": "string"}}}}}),
        );
        assert!(check(Full, &inlined, std::slice::from_ref(&old)).is_empty());
    }

    #[test]
    fn recursive_refs_terminate() {
        let tree = |leaf: &str| {
            js(json!({"type": "object", "properties": {
                "value": {"type": leaf},
                "children": {"type": "array", "items": {"$ref": "#"}}
            }}))
        };
        assert!(check(Full, &tree("string"), &[tree("string")]).is_empty());
        let problems = check(Backward, &tree("integer"), &[tree("string")]);
        assert!(
            has(
                &problems,
                "/properties/value",
                "type changed from string to integer"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn anchor_refs_are_not_compared() {
        let doc = |t: &str| {
            js(json!({"$defs": {"x": {"$anchor": "thing", "type": t}},
                      "type": "object", "properties": {"a": {"$ref": "#thing"}}}))
        };
        let problems = check(Backward, &doc("integer"), &[doc("string")]);
        assert!(
            has(&problems, "/properties/a", "not compared"),
            "{problems:?}"
        );
    }

    #[test]
    fn boolean_schemas() {
        let anything = js(json!(true));
        let nothing = js(json!(false));
        let string = js(json!({"type": "string"}));
        assert!(check(Backward, &anything, std::slice::from_ref(&string)).is_empty());
        assert!(check(Backward, &string, std::slice::from_ref(&nothing)).is_empty());
        assert!(has(
            &check(Backward, &nothing, std::slice::from_ref(&string)),
            "",
            "false"
        ));
        assert!(has(
            &check(Backward, &string, std::slice::from_ref(&anything)),
            "",
            "type narrowed from any"
        ));
    }

    #[test]
    fn any_of_on_both_sides() {
        let nullable = js(json!({"anyOf": [{"type": "string"}, {"type": "null"}]}));
        let string = js(json!({"type": "string"}));
        // Reader anyOf reads a plain string writer.
        assert!(check(Backward, &nullable, std::slice::from_ref(&string)).is_empty());
        // A string-only reader cannot read the null branch.
        let problems = check(Backward, &string, std::slice::from_ref(&nullable));
        assert!(
            has(
                &problems,
                "",
                "writer anyOf branch 1: type changed from null to string"
            ),
            "{problems:?}"
        );
        let wider =
            js(json!({"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "integer"}]}));
        assert!(check(Backward, &wider, std::slice::from_ref(&nullable)).is_empty());
        assert!(!check(Forward, &wider, std::slice::from_ref(&nullable)).is_empty());
    }

    #[test]
    fn unsupported_reader_keywords_are_not_compared() {
        let old = js(json!({"type": "object"}));
        let new = js(json!({"type": "object", "allOf": [{"required": ["a"]}]}));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(has(&problems, "/allOf", "not compared"), "{problems:?}");
        // Identical unsupported keywords are fine.
        assert!(check(Full, &new, std::slice::from_ref(&new)).is_empty());
    }

    #[test]
    fn bounds_and_string_constraints() {
        let old = js(json!({"type": "string", "maxLength": 10}));
        let new = js(json!({"type": "string", "maxLength": 5, "format": "email"}));
        let problems = check(Backward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "", "maxLength lowered from 10 to 5"),
            "{problems:?}"
        );
        assert!(has(&problems, "", "format"), "{problems:?}");
        assert!(check(Forward, &new, std::slice::from_ref(&old)).is_empty());

        let old = js(json!({"type": "number", "exclusiveMinimum": 0}));
        let new = js(json!({"type": "number", "minimum": 0}));
        assert!(check(Backward, &new, std::slice::from_ref(&old)).is_empty());
        let problems = check(Forward, &new, std::slice::from_ref(&old));
        assert!(
            has(&problems, "", "lower bound narrowed from >= 0 to > 0"),
            "{problems:?}"
        );
    }

    #[test]
    fn transitive_backward_catches_older_versions() {
        let v1 = js(obj(json!({"s": {"enum": ["a", "b"]}})));
        let v2 = js(obj(json!({"s": {"enum": ["a"]}}))); // registered under NONE
        let candidate = js(obj(json!({"s": {"enum": ["a"]}})));
        let history = [v1, v2];
        assert!(check(Backward, &candidate, &history).is_empty());
        let problems = check(BackwardTransitive, &candidate, &history);
        assert!(
            has(
                &problems,
                "/properties/s",
                "(against version index 0) enum value \"b\" removed"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn transitive_forward_and_full_catch_older_versions() {
        let v1 = js(
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
        );
        let v2 = js(json!({"type": "object", "properties": {"id": {"type": "string"}}}));
        let candidate = js(json!({"type": "object", "properties": {"id": {"type": "string"}}}));
        let history = [v1, v2];
        for mode in [Forward, Full] {
            assert!(check(mode, &candidate, &history).is_empty(), "{mode}");
        }
        for mode in [ForwardTransitive, FullTransitive] {
            let problems = check(mode, &candidate, &history);
            assert!(
                has(&problems, "/properties/id", "(against version index 0)"),
                "{mode}: {problems:?}"
            );
        }
        assert!(check(BackwardTransitive, &candidate, &history).is_empty());
    }

    #[test]
    fn formats_must_match() {
        let json_schema = js(json!({"type": "object"}));
        let proto = super::proto::schema(&super::proto::order_v1(), "shop.v1.Order");
        for mode in [Backward, Forward, FullTransitive] {
            let problems = check(mode, &json_schema, std::slice::from_ref(&proto));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0]
                    .reason
                    .contains("format changed from protobuf to json")
            );
        }
    }
}

pub(super) mod proto {
    use super::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet,
    };

    pub(crate) struct F(&'static str, i32, Type, Label, Option<&'static str>);

    fn field(F(name, number, ty, label, type_name): F) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.to_owned()),
            number: Some(number),
            r#type: Some(ty as i32),
            label: Some(label as i32),
            type_name: type_name.map(str::to_owned),
            ..Default::default()
        }
    }

    fn message(name: &str, fields: Vec<F>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.to_owned()),
            field: fields.into_iter().map(field).collect(),
            ..Default::default()
        }
    }

    fn status(values: &[(&str, i32)]) -> EnumDescriptorProto {
        EnumDescriptorProto {
            name: Some("Status".to_owned()),
            value: values
                .iter()
                .map(|(name, number)| EnumValueDescriptorProto {
                    name: Some((*name).to_owned()),
                    number: Some(*number),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Encodes a one-file `shop.v1` descriptor set.
    pub(crate) fn set(messages: Vec<DescriptorProto>, enums: Vec<EnumDescriptorProto>) -> Vec<u8> {
        set_with_syntax(messages, enums, "proto3")
    }

    fn set_with_syntax(
        messages: Vec<DescriptorProto>,
        enums: Vec<EnumDescriptorProto>,
        syntax: &str,
    ) -> Vec<u8> {
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("shop/v1/shop.proto".to_owned()),
                package: Some("shop.v1".to_owned()),
                message_type: messages,
                enum_type: enums,
                syntax: Some(syntax.to_owned()),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    const OPT: Label = Label::Optional;
    const REP: Label = Label::Repeated;

    fn item(qty: Type) -> DescriptorProto {
        message(
            "Item",
            vec![
                F("sku", 1, Type::String, OPT, None),
                F("qty", 2, qty, OPT, None),
            ],
        )
    }

    fn order(extra: Vec<F>) -> DescriptorProto {
        let mut fields = vec![
            F("id", 1, Type::String, OPT, None),
            F("price", 2, Type::Double, OPT, None),
            F("items", 3, Type::Message, REP, Some(".shop.v1.Item")),
            F("status", 4, Type::Enum, OPT, Some(".shop.v1.Status")),
        ];
        fields.extend(extra);
        message("Order", fields)
    }

    const STATUS_V1: &[(&str, i32)] = &[("UNKNOWN", 0), ("NEW", 1), ("PAID", 2)];

    pub(crate) fn order_v1() -> Vec<u8> {
        set(
            vec![order(vec![]), item(Type::Int32)],
            vec![status(STATUS_V1)],
        )
    }

    pub(crate) fn schema(bytes: &[u8], name: &str) -> ParsedSchema {
        ParsedSchema::parse(SchemaFormat::Protobuf, bytes, Some(name))
            .expect("valid descriptor set")
    }

    fn v1() -> ParsedSchema {
        schema(&order_v1(), "shop.v1.Order")
    }

    fn with_order(order_message: DescriptorProto) -> ParsedSchema {
        schema(
            &set(
                vec![order_message, item(Type::Int32)],
                vec![status(STATUS_V1)],
            ),
            "shop.v1.Order",
        )
    }

    // ---- parsing ----

    #[test]
    fn parse_ok_and_leading_dot() {
        let s = schema(&order_v1(), ".shop.v1.Order");
        assert_eq!(s.format(), SchemaFormat::Protobuf);
        assert_eq!(s.message_name(), Some("shop.v1.Order"));
    }

    #[test]
    fn missing_message_name() {
        for name in [None, Some(""), Some("  ")] {
            let err = ParsedSchema::parse(SchemaFormat::Protobuf, &order_v1(), name).unwrap_err();
            assert_eq!(err, SchemaError::MissingMessageName);
        }
    }

    #[test]
    fn unknown_message_lists_available() {
        let err = ParsedSchema::parse(SchemaFormat::Protobuf, &order_v1(), Some("shop.v1.Cart"))
            .unwrap_err();
        assert_eq!(
            err,
            SchemaError::UnknownMessage {
                name: "shop.v1.Cart".to_owned(),
                available: vec!["shop.v1.Item".to_owned(), "shop.v1.Order".to_owned()],
            }
        );
        assert!(err.to_string().contains("shop.v1.Item, shop.v1.Order"));
    }

    #[test]
    fn garbage_and_broken_descriptor_sets() {
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff",
            b"hello world",
            b"\x0a\x05abc",
        ] {
            let err = ParsedSchema::parse(SchemaFormat::Protobuf, bytes, Some("shop.v1.Order"))
                .unwrap_err();
            assert!(
                matches!(err, SchemaError::InvalidDescriptorSet { .. }),
                "{bytes:?}: {err:?}"
            );
        }
        // A field referring to a type that does not exist.
        let broken = set(
            vec![message(
                "Order",
                vec![F("x", 1, Type::Message, OPT, Some(".shop.v1.Nope"))],
            )],
            vec![],
        );
        let err = ParsedSchema::parse(SchemaFormat::Protobuf, &broken, Some("shop.v1.Order"))
            .unwrap_err();
        assert!(
            matches!(err, SchemaError::InvalidDescriptorSet { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unsupported_syntax_is_refused_not_panicking() {
        let editions = set_with_syntax(
            vec![order(vec![]), item(Type::Int32)],
            vec![status(STATUS_V1)],
            "editions",
        );
        let err = ParsedSchema::parse(SchemaFormat::Protobuf, &editions, Some("shop.v1.Order"))
            .unwrap_err();
        assert!(err.to_string().contains("unsupported syntax"), "{err}");
        // An empty syntax string means proto2.
        let empty = set_with_syntax(
            vec![message("Order", vec![F("id", 1, Type::String, OPT, None)])],
            vec![],
            "",
        );
        schema(&empty, "shop.v1.Order");
    }

    #[test]
    fn proto2_required_fields() {
        let required = |label| {
            schema(
                &set_with_syntax(
                    vec![message(
                        "Order",
                        vec![
                            F("id", 1, Type::String, label, None),
                            F("n", 2, Type::Int32, OPT, None),
                        ],
                    )],
                    vec![],
                    "proto2",
                ),
                "shop.v1.Order",
            )
        };
        let strict = required(Label::Required);
        let loose = required(OPT);
        let errors = strict.validate(&[0x10, 0x01]).unwrap_err();
        assert_eq!(errors[0].path, "id", "{errors:?}");
        assert!(
            errors[0].message.contains("required field id is missing"),
            "{errors:?}"
        );
        strict.validate(&[0x0a, 0x01, b'x']).unwrap();
        let problems = check(Backward, &strict, std::slice::from_ref(&loose));
        assert!(
            has(&problems, "id", "required by the reader"),
            "{problems:?}"
        );
        assert!(check(Forward, &strict, std::slice::from_ref(&loose)).is_empty());
    }

    // ---- payload validation ----

    fn encode(build: impl FnOnce(&DescriptorPool, &mut DynamicMessage)) -> Vec<u8> {
        let pool = DescriptorPool::decode(order_v1().as_slice()).unwrap();
        let mut msg = DynamicMessage::new(pool.get_message_by_name("shop.v1.Order").unwrap());
        build(&pool, &mut msg);
        msg.encode_to_vec()
    }

    fn item_value(pool: &DescriptorPool, sku: &str, qty: i32) -> Value {
        let mut item = DynamicMessage::new(pool.get_message_by_name("shop.v1.Item").unwrap());
        item.set_field_by_name("sku", Value::String(sku.to_owned()));
        item.set_field_by_name("qty", Value::I32(qty));
        Value::Message(item)
    }

    #[test]
    fn valid_payloads() {
        let payload = encode(|pool, msg| {
            msg.set_field_by_name("id", Value::String("o1".to_owned()));
            msg.set_field_by_name("price", Value::F64(9.5));
            msg.set_field_by_name(
                "items",
                Value::List(vec![item_value(pool, "a", 1), item_value(pool, "b", 2)]),
            );
            msg.set_field_by_name("status", Value::EnumNumber(2));
        });
        v1().validate(&payload).unwrap();
        v1().validate(b"").unwrap();
        // Unknown enum numbers are accepted (open enums).
        v1().validate(&encode(|_, msg| {
            msg.set_field_by_name("status", Value::EnumNumber(42))
        }))
        .unwrap();
    }

    #[test]
    fn wrong_wire_type_reports_field() {
        // price (field 2, double) sent as a varint.
        let errors = v1().validate(&[0x10, 0x01]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "price", "{errors:?}");
    }

    #[test]
    fn nested_failure_reports_nested_path() {
        let mut payload = encode(|pool, msg| {
            msg.set_field_by_name("items", Value::List(vec![item_value(pool, "ok", 1)]));
        });
        // items[1] whose sku (field 1, string) is not UTF-8.
        payload.extend_from_slice(&[0x1a, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
        let errors = v1().validate(&payload).unwrap_err();
        assert_eq!(errors[0].path, "items[1].sku", "{errors:?}");
    }

    #[test]
    fn truncated_payload() {
        // id: length 5 but only one byte follows.
        let errors = v1().validate(&[0x0a, 0x05, b'a']).unwrap_err();
        assert_eq!(errors[0].path, "id", "{errors:?}");
        let errors = v1().validate(&[0x80]).unwrap_err();
        assert_eq!(errors[0].path, "", "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_violations() {
        let mut payload = encode(|pool, msg| {
            msg.set_field_by_name("items", Value::List(vec![item_value(pool, "a", 1)]));
        });
        payload.extend_from_slice(&[0x48, 0x01]); // field 9, varint
        let errors = v1().validate(&payload).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "#9");
        assert!(errors[0].message.contains("field number 9"), "{errors:?}");
        // Nested unknown field: items[0] with field 7.
        let errors = v1().validate(&[0x1a, 0x02, 0x38, 0x01]).unwrap_err();
        assert_eq!(errors[0].path, "items[0].#7", "{errors:?}");
    }

    // ---- compatibility ----

    #[test]
    fn adding_and_removing_fields_is_compatible() {
        let added = with_order(order(vec![F("note", 5, Type::String, OPT, None)]));
        for mode in CompatibilityMode::ALL {
            assert!(check(mode, &added, &[v1()]).is_empty(), "{mode}");
            assert!(
                check(mode, &v1(), std::slice::from_ref(&added)).is_empty(),
                "{mode}"
            );
        }
    }

    #[test]
    fn nested_type_change_breaks_both() {
        let changed = schema(
            &set(
                vec![order(vec![]), item(Type::String)],
                vec![status(STATUS_V1)],
            ),
            "shop.v1.Order",
        );
        for mode in [Backward, Forward] {
            let problems = check(mode, &changed, &[v1()]);
            assert!(
                has(&problems, "items.qty", "type changed from int32 to string"),
                "{mode}: {problems:?}"
            );
        }
        assert_eq!(check(Full, &changed, &[v1()]).len(), 1);
    }

    #[test]
    fn widening_is_backward_only() {
        let wide = schema(
            &set(
                vec![order(vec![]), item(Type::Int64)],
                vec![status(STATUS_V1)],
            ),
            "shop.v1.Order",
        );
        assert!(check(Backward, &wide, &[v1()]).is_empty());
        let problems = check(Forward, &wide, &[v1()]);
        assert!(
            has(&problems, "items.qty", "type changed from int32 to int64"),
            "{problems:?}"
        );
        // sint32 uses zig-zag encoding: never readable as int32.
        let zigzag = schema(
            &set(
                vec![order(vec![]), item(Type::Sint32)],
                vec![status(STATUS_V1)],
            ),
            "shop.v1.Order",
        );
        assert!(!check(Backward, &zigzag, &[v1()]).is_empty());
    }

    #[test]
    fn field_number_change_breaks_both() {
        let mut moved = order(vec![]);
        moved.field[1].number = Some(7); // price 2 -> 7
        let moved = with_order(moved);
        for mode in [Backward, Forward, Full] {
            let problems = check(mode, &moved, &[v1()]);
            assert!(
                has(&problems, "price", "field number changed from 2 to 7"),
                "{mode}: {problems:?}"
            );
        }
    }

    #[test]
    fn renaming_a_field_keeps_compatibility() {
        let mut renamed = order(vec![]);
        renamed.field[1].name = Some("amount".to_owned());
        assert!(check(FullTransitive, &with_order(renamed), &[v1()]).is_empty());
    }

    #[test]
    fn repeated_singular_change_breaks_both() {
        let mut single = order(vec![]);
        single.field[2].label = Some(OPT as i32); // items no longer repeated
        let single = with_order(single);
        for mode in [Backward, Forward] {
            let problems = check(mode, &single, &[v1()]);
            assert!(
                has(&problems, "items", "field changed from"),
                "{mode}: {problems:?}"
            );
        }
    }

    #[test]
    fn message_type_change_breaks_both() {
        let mut retyped = order(vec![]);
        retyped.field[2].type_name = Some(".shop.v1.Order".to_owned());
        let retyped = with_order(retyped);
        let problems = check(Full, &retyped, &[v1()]);
        assert!(
            has(
                &problems,
                "items",
                "message type changed from message shop.v1.Item to message shop.v1.Order"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn enum_value_removed_or_added() {
        let fewer = schema(
            &set(
                vec![order(vec![]), item(Type::Int32)],
                vec![status(&[("UNKNOWN", 0), ("NEW", 1)])],
            ),
            "shop.v1.Order",
        );
        let problems = check(Backward, &fewer, &[v1()]);
        assert!(
            has(
                &problems,
                "status",
                "enum value PAID = 2 of shop.v1.Status removed"
            ),
            "{problems:?}"
        );
        assert!(check(Forward, &fewer, &[v1()]).is_empty());
        let problems = check(Forward, &v1(), std::slice::from_ref(&fewer));
        assert!(
            has(&problems, "status", "PAID = 2 of shop.v1.Status added"),
            "{problems:?}"
        );
    }

    #[test]
    fn root_message_renamed_breaks_both() {
        let other = schema(&order_v1(), "shop.v1.Item");
        for mode in [Backward, Forward] {
            let problems = check(mode, &other, &[v1()]);
            assert!(
                has(
                    &problems,
                    "",
                    "message type changed from shop.v1.Order to shop.v1.Item"
                ),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn proto_transitive() {
        // v1 has price as double; v2 dropped it; the candidate reuses number 2
        // for a string: fine against v2, broken against v1.
        let mut v2_order = order(vec![]);
        v2_order.field.remove(1);
        let v2 = with_order(v2_order.clone());
        let mut candidate = v2_order;
        candidate
            .field
            .push(field(F("coupon", 2, Type::String, OPT, None)));
        let candidate = with_order(candidate);
        let history = [v1(), v2];
        assert!(check(Full, &candidate, &history).is_empty());
        let problems = check(FullTransitive, &candidate, &history);
        assert!(
            has(
                &problems,
                "coupon",
                "(against version index 0) type changed from double to string"
            ),
            "{problems:?}"
        );
    }
}

/// Tiny deterministic xorshift generator for the fuzz tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next() as usize) % (max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let json_schema = js(
        json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "number"}}}}),
    );
    let proto_schema = proto::schema(&proto::order_v1(), "shop.v1.Order");
    for _ in 0..3000 {
        let bytes = rng.bytes(300);
        assert!(ParsedSchema::parse(SchemaFormat::JsonSchema, &bytes, None).is_err());
        assert!(
            ParsedSchema::parse(SchemaFormat::Protobuf, &bytes, Some("shop.v1.Order")).is_err()
        );
        assert!(ParsedSchema::parse(SchemaFormat::Protobuf, &bytes, None).is_err());
        if !bytes.is_empty() {
            assert!(json_schema.validate(&bytes).is_err());
        }
        let _ = proto_schema.validate(&bytes);
    }
}

const FUZZ_ROUNDS: usize = 1500;

#[test]
fn fuzz_mutated_inputs_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let original = proto::order_v1();
    let base = proto::schema(&original, "shop.v1.Order");
    let valid_payload = [
        0x0a, 0x02, b'o', b'1', 0x1a, 0x04, 0x0a, 0x02, b'a', b'b', 0x20, 0x01,
    ];
    let json_base = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": ["string", "null"]},
        "b": {"anyOf": [{"type": "integer"}, {"$ref": "#"}]}}, "additionalProperties": false});
    let json_text = json_base.to_string().into_bytes();
    let json_parsed = js(json_base);
    for _ in 0..FUZZ_ROUNDS {
        let mut descriptor = original.clone();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() as usize) % descriptor.len();
            descriptor[at] = rng.next() as u8;
        }
        if let Ok(mutated) =
            ParsedSchema::parse(SchemaFormat::Protobuf, &descriptor, Some("shop.v1.Order"))
        {
            let _ = mutated.validate(&valid_payload);
            let _ = check_compatibility(FullTransitive, &mutated, std::slice::from_ref(&base));
        }
        let mut payload = valid_payload.to_vec();
        let at = (rng.next() as usize) % payload.len();
        payload[at] = rng.next() as u8;
        let _ = base.validate(&payload);

        let mut text = json_text.clone();
        let at = (rng.next() as usize) % text.len();
        let alphabet = b"{}[]\":,0a \\";
        text[at] = alphabet[(rng.next() as usize) % alphabet.len()];
        if let Ok(mutated) = ParsedSchema::parse(SchemaFormat::JsonSchema, &text, None) {
            let _ = mutated.validate(br#"{"a": "x", "b": {"a": null}}"#);
            let _ =
                check_compatibility(FullTransitive, &mutated, std::slice::from_ref(&json_parsed));
        }
    }
}
