//! The cheap, stable half of the coverage-guided fuzzing in `fuzz/`: every checked-in seed
//! corpus file and every crash regression (`fuzz/regressions/<target>/`) is run through the
//! same harness the cargo-fuzz targets use (`fuzz/src/harness.rs`, compiled in here), so a
//! crash the fuzzer found stays fixed without nightly. The long coverage-guided runs are
//! `scripts/fuzz` (docs/hardening.md §5).
//!
//! Besides, a bounded mutation-fuzzing pass runs every target on inputs mutated from those
//! seeds (stable, seconds; `a_bounded_mutation_fuzz_pass_over_every_target`).
//!
//! The seeds are small real inputs made by the codebase's own encoders;
//! `NEXUS_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpora` rewrites them.

#[path = "../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nexus_proto::v1::{self, Batch, Frame, Header, LinkFrame, Pub, Reply, Req, frame::Kind};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_and_regression_file_runs_clean() {
    if std::env::var_os("NEXUS_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let root = fuzz_dir();
    for (name, run) in harness::TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} has no seeds (NEXUS_WRITE_FUZZ_SEEDS=1 writes them)"
        );
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
        let regressions = files(&root.join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap();
            run(&data);
        }
        eprintln!(
            "{name}: {} seeds, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
}

/// How many mutated inputs the bounded pass runs per target ($NEXUS_FUZZ_CASES, default 5000),
/// and for at most how long (3 s per target, so a loaded machine stays within the suite's
/// budget; the pass prints what it ran).
fn pass_budget() -> (usize, Duration) {
    let cases = std::env::var("NEXUS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let secs = if std::env::var_os("NEXUS_FUZZ_CASES").is_some() {
        3600
    } else {
        3
    };
    (cases, Duration::from_secs(secs))
}

/// One mutation of `data`, as libFuzzer's mutators do without coverage: a bit flip, an
/// "interesting" byte, random bytes inserted, a range deleted, duplicated or overwritten with
/// a long varint, a splice with another input of the target, or a truncation.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'.', b'>', b'*'];
    let len = data.len();
    let at = |rng: &mut StdRng| {
        if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 => {
            let i = if len == 0 {
                0
            } else {
                rng.random_range(0..=len)
            };
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(i..i, bytes);
        }
        3 if len > 1 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(32));
            data.drain(i..i + n);
        }
        4 if len > 1 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(64));
            let copy = data[i..i + n].to_vec();
            let j = rng.random_range(0..=len);
            data.splice(j..j, copy);
        }
        5 => {
            // A long or maximal varint: lengths and counts a peer announces.
            let i = if len == 0 {
                0
            } else {
                rng.random_range(0..=len)
            };
            let v: &[u8] = if rng.random() {
                &[0xff, 0xff, 0xff, 0xff, 0x0f]
            } else {
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
            };
            data.splice(i..i, v.iter().copied());
        }
        6 if !others.is_empty() => {
            let other = &others[rng.random_range(0..others.len())];
            let cut = if len == 0 {
                0
            } else {
                rng.random_range(0..=len)
            };
            let from = if other.is_empty() {
                0
            } else {
                rng.random_range(0..=other.len())
            };
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => data.truncate(at(rng)),
        _ => data.push(rng.random()),
    }
    data.truncate(64 * 1024);
}

/// Runs `cases` mutated inputs (each 1-8 stacked mutations of a seed or of an earlier
/// mutant) through `run`, within `budget`. A panic is caught: the input is written to the
/// temporary directory and the error names the target, the RNG seed (`NEXUS_FUZZ_SEED`
/// replays the pass) and the file. Returns how many inputs ran.
fn mutation_pass(
    name: &str,
    run: fn(&[u8]),
    seeds: &[Vec<u8>],
    cases: usize,
    budget: Duration,
    rng_seed: u64,
) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let started = Instant::now();
    for case in 0..cases {
        if started.elapsed() > budget {
            return Ok(case);
        }
        let from_pool = !pool.is_empty() && rng.random_bool(0.5);
        let mut data = if from_pool {
            pool[rng.random_range(0..pool.len())].clone()
        } else {
            seeds[rng.random_range(0..seeds.len())].clone()
        };
        for _ in 0..rng.random_range(1..=8) {
            mutate(&mut rng, &mut data, seeds);
        }
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            let file = std::env::temp_dir().join(format!("nexus-fuzz-{name}-{rng_seed}-{case}"));
            let _ = std::fs::write(&file, &data);
            return Err(format!(
                "fuzz target {name} panicked on mutated input {case} (NEXUS_FUZZ_SEED={rng_seed} \
                 replays this pass); the input is in {}: once fixed, copy it into \
                 fuzz/regressions/{name}/",
                file.display()
            ));
        }
        if pool.len() < 64 {
            pool.push(data);
        } else {
            let i = rng.random_range(0..pool.len());
            pool[i] = data;
        }
    }
    Ok(cases)
}

/// The bounded fuzz pass of every `cargo test`, on stable: mutation fuzzing (no coverage
/// feedback) of every cargo-fuzz target from its checked-in seeds, through the same harness.
/// The RNG seed changes every run (printed; `NEXUS_FUZZ_SEED` fixes it), so successive runs
/// explore different inputs; `NEXUS_FUZZ_CASES=N` runs N inputs per target without the time
/// cap. The coverage-guided runs (nightly) are `scripts/fuzz`.
#[test]
fn a_bounded_mutation_fuzz_pass_over_every_target() {
    let (cases, budget) = pass_budget();
    let rng_seed = std::env::var("NEXUS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("mutation fuzz pass: NEXUS_FUZZ_SEED={rng_seed}, up to {cases} inputs per target");
    for (name, run) in harness::TARGETS {
        let seeds: Vec<Vec<u8>> = files(&fuzz_dir().join("corpus").join(name))
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        // The DNS target is a UDP round trip per input: fewer of them.
        let n = if *name == "dns_query" {
            cases / 8
        } else {
            cases
        };
        let started = Instant::now();
        let ran = mutation_pass(name, *run, &seeds, n, budget, rng_seed)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{name}: {ran} mutated inputs in {:?}", started.elapsed());
        assert!(ran > 0, "{name}: no input ran within {budget:?}");
    }
}

/// The pass can find a bug: a planted one that only a mutated input reaches.
#[test]
fn the_mutation_pass_finds_a_planted_bug() {
    fn planted(data: &[u8]) {
        // Reached only by keeping the seed's prefix and changing a byte after it to 0xff.
        if data.starts_with(b"orders") && data[6..].contains(&0xff) {
            panic!("planted bug");
        }
    }
    let seeds = vec![b"orders.created".to_vec()];
    let e = mutation_pass("planted", planted, &seeds, 5000, Duration::from_secs(60), 7)
        .expect_err("the planted bug is found");
    assert!(e.contains("NEXUS_FUZZ_SEED=7"), "{e}");
    let file = e
        .split("the input is in ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let data = std::fs::read(file).unwrap();
    assert!(std::panic::catch_unwind(|| planted(&data)).is_err());
    std::fs::remove_file(file).unwrap();
}

/// The seeds decode as what they were made from (so a format change that makes them stale
/// fails here instead of silently fuzzing garbage).
#[test]
fn seeds_are_valid_inputs() {
    for f in files(&fuzz_dir().join("corpus/session_batch")) {
        Batch::decode(Bytes::from(std::fs::read(&f).unwrap()))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    for f in files(&fuzz_dir().join("corpus/gateway_config")) {
        let text = std::fs::read_to_string(&f).unwrap();
        nexus_gateway::GatewayConfig::from_toml(&text)
            .and_then(|c| c.validate().map(|()| c))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn header(k: &str, v: &str) -> Header {
    Header {
        key: k.into(),
        value: v.into(),
    }
}

fn batch(frames: Vec<Kind>) -> Vec<u8> {
    Batch::of(
        frames
            .into_iter()
            .map(|k| Frame { kind: Some(k) })
            .collect(),
    )
    .encode_to_vec()
}

fn write_seeds() {
    // Session batches: what adapters send (and the gateway sends back).
    let hello = Kind::Hello(v1::Hello {
        api_key: "nxk_01JABCDEF.s3cr3t".into(),
        client_name: "orders-service".into(),
        language: "rust".into(),
        version: "0.1.0".into(),
        protocol: 1,
        encodings: vec!["zstd".into(), "lz4".into()],
    });
    let publish = Kind::Pub(Pub {
        subject: "orders.created".into(),
        reply_to: "".into(),
        headers: vec![header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        payload: Bytes::from_static(br#"{"id":42,"total":9.5}"#),
        id: Bytes::from_static(&[1; 16]),
        ack_id: 7,
    });
    let sub = Kind::Sub(v1::Sub {
        sid: 1,
        subject: "orders.>".into(),
        queue_group: "workers".into(),
        ack_id: 2,
    });
    let req = Kind::Req(Req {
        req_id: 9,
        subject: "inventory.check".into(),
        headers: vec![header("nexus-publisher-key", "k1")],
        payload: Bytes::from_static(b"sku-1"),
        timeout_ms: 5000,
        id: Bytes::new(),
    });
    let reply = Kind::Reply(Reply {
        req_id: 9,
        reply_to: "_INBOX.abc.1".into(),
        headers: vec![],
        payload: Bytes::from_static(b"ok"),
        error: Some(v1::Error {
            code: 3,
            message: "no responders".into(),
            ref_id: 9,
        }),
    });
    write(
        "session_batch",
        "hello-sub",
        &batch(vec![hello.clone(), sub.clone()]),
    );
    write("session_batch", "pub", &batch(vec![publish.clone()]));
    write("session_batch", "req-reply", &batch(vec![req, reply]));
    write(
        "session_batch",
        "mixed",
        &batch(vec![
            hello,
            sub,
            publish,
            Kind::Unsub(v1::Unsub { sid: 1 }),
            Kind::Ping(v1::Ping { nonce: 5 }),
            Kind::Ack(v1::Ack {
                ..Default::default()
            }),
            Kind::Credit(v1::Credit {
                ..Default::default()
            }),
            Kind::StreamOpen(v1::StreamOpen {
                stream_id: 3,
                subject: "files.upload".into(),
                headers: vec![header("name", "a.txt")],
                credits: 8,
                sid: 0,
            }),
            Kind::StreamData(v1::StreamData {
                stream_id: 3,
                ..Default::default()
            }),
            Kind::StreamClose(v1::StreamClose {
                stream_id: 3,
                ..Default::default()
            }),
        ]),
    );
    write(
        "session_batch",
        "msg",
        &batch(vec![Kind::Msg(v1::Msg {
            sid: 1,
            subject: "orders.created".into(),
            reply_to: "_INBOX.x.2".into(),
            headers: vec![header("a", "b")],
            payload: Bytes::from_static(b"payload"),
            id: Bytes::from_static(&[2; 16]),
            deadline_ms: 100,
        })]),
    );

    // Subjects: "<pattern>\0<subject>".
    for (i, s) in [
        "orders.>\0orders.created.eu",
        "orders.*.eu\0orders.created.eu",
        "*\0a",
        ">\0_INBOX.abc.1",
        "orders.created\0orders.cre\u{200b}ated",
        "a.b.c.d.e.f.g.h\0a.b.c.d.e.f.g.h",
        "nxk_01JABCDEF.s3cr3t\0\u{202e}x",
    ]
    .iter()
    .enumerate()
    {
        write("subject", &format!("s{i}"), s.as_bytes());
    }

    // JSON Schema: "<candidate>\0<previous or payload>".
    let order = r#"{"type":"object","properties":{"id":{"type":"integer"},"total":{"type":"number","minimum":0},"tags":{"type":"array","items":{"type":"string","maxLength":8}}},"required":["id"],"additionalProperties":false}"#;
    let order2 = r#"{"type":"object","properties":{"id":{"type":"integer"},"total":{"type":"number"},"note":{"type":["string","null"]}},"required":["id","total"]}"#;
    write(
        "schema_json",
        "order-pair",
        format!("{order}\0{order2}").as_bytes(),
    );
    write(
        "schema_json",
        "order-payload",
        format!("{order}\0{{\"id\":1,\"total\":2.5,\"tags\":[\"a\"]}}").as_bytes(),
    );
    write(
        "schema_json",
        "combinators",
        br##"{"oneOf":[{"type":"string","pattern":"^[a-z]+$"},{"enum":[1,2,3]}],"$defs":{"x":{"$ref":"#"}}}"##,
    );

    // Protobuf: "<message>\n<FileDescriptorSet>\0\0\0\0<message>\n<FileDescriptorSet>".
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    };
    let field = |name: &str, number: i32, ty: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        json_name: None,
        ..Default::default()
    };
    let set = |fields: Vec<FieldDescriptorProto>| {
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("shop/v1/order.proto".into()),
                package: Some("shop.v1".into()),
                syntax: Some("proto3".into()),
                message_type: vec![DescriptorProto {
                    name: Some("Order".into()),
                    field: fields,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    let v1s = set(vec![
        field("id", 1, Type::Uint64),
        field("sku", 2, Type::String),
    ]);
    let v2s = set(vec![
        field("id", 1, Type::Uint64),
        field("sku", 2, Type::Bytes),
        field("total", 3, Type::Double),
    ]);
    let mut pair = b"shop.v1.Order\n".to_vec();
    pair.extend_from_slice(&v2s);
    pair.extend_from_slice(&[0, 0, 0, 0]);
    pair.extend_from_slice(b"shop.v1.Order\n");
    pair.extend_from_slice(&v1s);
    write("schema_protobuf", "order-pair", &pair);
    let mut one = b"shop.v1.Order\n".to_vec();
    one.extend_from_slice(&v1s);
    write("schema_protobuf", "order", &one);

    // Gateway config files.
    write(
        "gateway_config",
        "operations-example.toml",
        include_str!("../docs/operations.md")
            .split("```toml\n# /etc/nexus/gateway.toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the example in docs/operations.md §2.4")
            .as_bytes(),
    );
    write(
        "gateway_config",
        "minimal.toml",
        b"region = \"us-east\"\nlisten = \"127.0.0.1:7422\"\nauth = \"off\"\n",
    );

    // Federation and cluster link streams.
    let mut link = Vec::new();
    let frames = [
        LinkFrame {
            kind: Some(v1::link_frame::Kind::Hello(v1::LinkHello {
                region: "us-east".into(),
                gateway_id: "gw-0000000a".into(),
                ..Default::default()
            })),
        },
        LinkFrame {
            kind: Some(v1::link_frame::Kind::Interest(v1::InterestUpdate {
                ..Default::default()
            })),
        },
        LinkFrame {
            kind: Some(v1::link_frame::Kind::Forward(v1::Forward {
                subject: "orders.created".into(),
                payload: Bytes::from_static(b"{}"),
                origin_region: "us-east".into(),
                headers: vec![header("nexus-publisher-key", "k1")],
                ..Default::default()
            })),
        },
        LinkFrame {
            kind: Some(v1::link_frame::Kind::Ping(v1::LinkPing {
                ..Default::default()
            })),
        },
    ];
    for f in &frames {
        f.encode_length_delimited(&mut link).unwrap();
    }
    write("link_frames", "hello-interest-forward-ping", &link);

    // DNS queries: what resolvers send.
    let query = |id: u16, labels: &[&str], qtype: u16| {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in labels {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    };
    write("dns_query", "srv", &harness::srv_query(1));
    write(
        "dns_query",
        "a-gw",
        &query(2, &["gw-00000000", "gw", "us-east", "nexus", "local"], 1),
    );
    write(
        "dns_query",
        "fed-srv",
        &query(3, &["_nexus-fed", "_udp", "us-east", "nexus", "local"], 33),
    );
    write(
        "dns_query",
        "txt-config",
        &query(4, &["_nexus-config", "nexus", "local"], 16),
    );
    write("dns_query", "soa", &query(5, &["nexus", "local"], 6));
    write("dns_query", "outside", &query(6, &["example", "com"], 1));
    // EDNS: an OPT record with a 1232-byte payload size.
    let mut edns = query(7, &["_nexus", "_tcp", "us-east", "nexus", "local"], 33);
    edns[11] = 1;
    edns.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    write("dns_query", "srv-edns", &edns);
}
