//! Codec properties: both encodings carry identical messages, and no input bytes panic the decoder.

use std::collections::BTreeMap;

use outlast_protocol::v1::{BatchAnswer, ClientMsg, Control, ServerMsg};
use outlast_protocol::*;
use proptest::prelude::*;

fn job_id() -> impl Strategy<Value = JobId> {
    any::<[u8; 16]>().prop_map(JobId::from_bytes)
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (any::<u32>(), proptest::option::of(".{0,20}"))
            .prop_map(|(position, reason)| EventKind::Queued { position, reason }),
        any::<u32>().prop_map(|attempt| EventKind::Started { attempt }),
        (any::<u64>(), any::<u64>(), proptest::option::of(".{0,20}"))
            .prop_map(|(value, max, label)| EventKind::Progress { value, max, label }),
        (".{0,10}", proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(mime, data)| {
            EventKind::Preview {
                mime,
                data: Blob(data),
            }
        }),
        (".{1,10}", any::<u64>()).prop_map(|(name, size)| EventKind::Output(OutputInfo {
            name,
            mime: "image/png".into(),
            size,
            sha256: "ab".repeat(32),
        })),
        any::<bool>().prop_map(|cached| EventKind::Completed { cached }),
        ".{0,30}".prop_map(|message| EventKind::Failed(Failure {
            code: FailureCode::CommandFailed,
            message,
            detail: Some(serde_json::json!({"exit_status": 2})),
        })),
        ".{0,30}".prop_map(|reason| EventKind::Canceled { reason }),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (job_id(), any::<u64>(), any::<u64>(), event_kind()).prop_map(
            |(job_id, seq, at_ms, kind)| ServerMsg::Event(JobEvent {
                job_id,
                seq: Seq(seq),
                at_ms,
                kind
            })
        ),
        (job_id(), any::<u64>()).prop_map(|(j, s)| Control::Heartbeat {
            jobs: BTreeMap::from([(j, Seq(s))])
        }
        .into()),
        (job_id(), any::<bool>()).prop_map(|(job_id, created)| Control::Submitted {
            req: Some(7),
            job_id,
            created
        }
        .into()),
        (job_id(), any::<u32>(), proptest::option::of(".{0,20}")).prop_map(
            |(job_id, position, reason)| Control::Position {
                job_id,
                position,
                reason
            }
            .into()
        ),
        (
            job_id(),
            any::<u64>(),
            proptest::option::of((any::<u32>(), proptest::option::of(".{0,20}")))
        )
            .prop_map(|(job_id, seq, place)| {
                let mut snapshot = JobSnapshot::new(job_id, "demo".into(), 1);
                snapshot.seq = Seq(seq);
                if let Some((position, reason)) = place {
                    snapshot.position = Some(position);
                    snapshot.queue_reason = reason;
                }
                Control::Subscribed {
                    req: None,
                    job_id,
                    recovered: false,
                    snapshot: Some(snapshot),
                }
                .into()
            }),
        proptest::collection::vec(
            prop_oneof![
                (job_id(), any::<bool>()).prop_map(|(job_id, created)| BatchAnswer::Submitted {
                    job_id,
                    created,
                    state: if created {
                        JobState::Queued
                    } else {
                        JobState::Completed
                    },
                }),
                ".{0,30}".prop_map(|message| BatchAnswer::Refused {
                    error: ErrorBody {
                        code: ErrorCode::InvalidRequest,
                        message
                    }
                }),
            ],
            0..8
        )
        .prop_map(|jobs| Control::SubmittedBatch {
            req: Some(11),
            jobs
        }
        .into()),
        ".{0,30}".prop_map(|message| Control::Error {
            req: None,
            code: ErrorCode::NotFound,
            message
        }
        .into()),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (job_id(), proptest::option::of(any::<u64>())).prop_map(|(job_id, after)| {
            ClientMsg::Subscribe {
                req: Some(1),
                job_id,
                after: after.map(Seq),
            }
        }),
        job_id().prop_map(|job_id| ClientMsg::Cancel { req: None, job_id }),
        any::<u64>().prop_map(|nonce| ClientMsg::Ping { nonce }),
        (1u32..100, 1u32..1000).prop_map(|(steps, step_ms)| ClientMsg::Submit {
            req: Some(3),
            job: JobSpec {
                backend: "demo".into(),
                workflow: serde_json::json!({"steps": steps, "step_ms": step_ms}),
                inputs: BTreeMap::from([("image".to_owned(), UploadId::from_bytes([7; 16]))]),
                idempotency_key: Some("k-1".parse().expect("valid key")),
                cache: steps % 2 == 0,
                retries: step_ms % 3,
                webhook: (steps % 3 == 0).then(|| WebhookSpec {
                    url: "https://hooks.example/outlast".into(),
                    events: vec![WebhookEvent::Progress, WebhookEvent::Completed],
                    progress_interval_s: Some(step_ms % 7 + 1),
                }),
            },
        }),
        proptest::collection::vec((1u32..100, "[a-z0-9-]{1,20}", any::<bool>()), 0..8).prop_map(
            |specs| ClientMsg::SubmitBatch {
                req: Some(4),
                jobs: specs
                    .into_iter()
                    .map(|(steps, key, good)| if good {
                        serde_json::json!({
                            "backend": "demo",
                            "workflow": {"steps": steps, "step_ms": 0},
                            "inputs": {"image": UploadId::from_bytes([steps as u8; 16])},
                            "idempotency_key": key,
                        })
                    } else {
                        // A spec the gateway refuses on its own must still travel as sent.
                        serde_json::json!({"backend": 7, "bogus": [key, steps]})
                    })
                    .collect(),
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn server_messages_identical_in_both_codecs(msg in server_msg()) {
        for codec in [Codec::MsgPack, Codec::Json] {
            let frame = codec.encode(&msg).expect("encodes");
            let bytes = match &frame { Frame::Binary(b) => b.clone(), Frame::Text(t) => t.clone().into_bytes() };
            let back: ServerMsg = codec.decode(&bytes).expect("decodes");
            prop_assert_eq!(&back, &msg);
        }
    }

    #[test]
    fn client_messages_identical_in_both_codecs(msg in client_msg()) {
        for codec in [Codec::MsgPack, Codec::Json] {
            let frame = codec.encode(&msg).expect("encodes");
            let bytes = match &frame { Frame::Binary(b) => b.clone(), Frame::Text(t) => t.clone().into_bytes() };
            let back = codec.decode_client(&bytes, 1 << 20).expect("decodes");
            prop_assert_eq!(&back, &msg);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for codec in [Codec::MsgPack, Codec::Json] {
            let _ = codec.decode_client(&bytes, 1 << 20);
            let _ = codec.decode::<ServerMsg>(&bytes);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(msg in client_msg(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        for codec in [Codec::MsgPack, Codec::Json] {
            let mut bytes = match codec.encode(&msg).expect("encodes") { Frame::Binary(b) => b, Frame::Text(t) => t.into_bytes() };
            for (at, val) in &flips {
                let n = bytes.len();
                bytes[at % n] = *val;
            }
            let n = bytes.len();
            let _ = codec.decode_client(&bytes[..cut % (n + 1)], 1 << 20);
            let _ = codec.decode_client(&bytes, 1 << 20);
        }
    }
}

/// The bad-input table: each input and the error code it must produce.
#[test]
fn classification_table() {
    let cases: &[(&str, Option<ErrorCode>)] = &[
        (r#"{"type":"ping","nonce":1}"#, None),
        (r#"not json"#, Some(ErrorCode::MalformedMessage)),
        (r#"[1,2,3]"#, Some(ErrorCode::MalformedMessage)),
        (r#"{"nonce":1}"#, Some(ErrorCode::MalformedMessage)),
        (
            r#"{"type":"launch_missiles","req":9}"#,
            Some(ErrorCode::UnknownMessageType),
        ),
        (r#"{"type":"ping"}"#, Some(ErrorCode::InvalidMessage)),
        (
            r#"{"type":"subscribe","job_id":"job_nothex"}"#,
            Some(ErrorCode::InvalidMessage),
        ),
        (
            r#"{"type":"ping","nonce":1,"extra":true}"#,
            Some(ErrorCode::InvalidMessage),
        ),
        (
            r#"{"type":"submit","job":{"backend":"demo","bogus":1}}"#,
            Some(ErrorCode::InvalidMessage),
        ),
    ];
    for (input, want) in cases {
        let got = Codec::Json.decode_client(input.as_bytes(), 1024);
        assert_eq!(
            got.as_ref().err().map(|(e, _)| e.code()),
            *want,
            "input {input}"
        );
        // The same message as MessagePack classifies the same way.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(input) {
            let packed = rmp_serde::to_vec_named(&value).expect("packs");
            let got = Codec::MsgPack.decode_client(&packed, 1024);
            assert_eq!(
                got.err().map(|(e, _)| e.code()),
                *want,
                "msgpack of {input}"
            );
        }
    }
    let (err, req) = Codec::Json
        .decode_client(br#"{"type":"nope","req":42}"#, 1024)
        .expect_err("unknown");
    assert_eq!((err.code(), req), (ErrorCode::UnknownMessageType, Some(42)));
    let (err, _) = Codec::Json
        .decode_client(&[b' '; 2048], 1024)
        .expect_err("too large");
    assert_eq!(err.code(), ErrorCode::MessageTooLarge);
}

/// A `submit_batch` whose middle spec is no job spec still decodes (in both codecs), so that
/// the gateway can refuse that one job alone, as `POST /v1/jobs/batch` does; a batch without
/// `jobs` is an invalid message as a whole.
#[test]
fn a_bad_spec_in_a_batch_does_not_spoil_the_message() {
    let input = r#"{"type":"submit_batch","req":5,"jobs":[{"backend":"demo","workflow":{}},{"backend":"demo","bogus":1},{"backend":"demo","idempotency_key":"k"}]}"#;
    let value: serde_json::Value = serde_json::from_str(input).expect("json");
    let packed = rmp_serde::to_vec_named(&value).expect("packs");
    for (codec, bytes) in [
        (Codec::Json, input.as_bytes().to_vec()),
        (Codec::MsgPack, packed),
    ] {
        let msg = codec.decode_client(&bytes, 4096).expect("decodes");
        let ClientMsg::SubmitBatch { req, jobs } = msg else {
            panic!("{codec:?}: expected submit_batch, got {msg:?}");
        };
        assert_eq!(req, Some(5));
        assert_eq!(jobs.len(), 3, "{codec:?}");
        assert_eq!(jobs[1], serde_json::json!({"backend": "demo", "bogus": 1}));
        assert!(serde_json::from_value::<JobSpec>(jobs[0].clone()).is_ok());
        assert!(serde_json::from_value::<JobSpec>(jobs[1].clone()).is_err());
    }
    let (err, req) = Codec::Json
        .decode_client(br#"{"type":"submit_batch","req":6}"#, 1024)
        .expect_err("no jobs");
    assert_eq!((err.code(), req), (ErrorCode::InvalidMessage, Some(6)));
    // The documented answer shape: one element per job, a submission or an error.
    let answer: ServerMsg = Codec::Json
        .decode(br#"{"type":"submitted_batch","req":5,"jobs":[{"job_id":"job_0123456789abcdef0123456789abcdef","created":true,"state":"queued"},{"error":{"code":"invalid_request","message":"invalid job JSON at jobs[1]"}}]}"#)
        .expect("submitted_batch");
    let ServerMsg::Control(Control::SubmittedBatch { req, jobs }) = answer else {
        panic!("expected submitted_batch, got {answer:?}");
    };
    assert_eq!(req, Some(5));
    assert!(matches!(
        jobs.as_slice(),
        [
            BatchAnswer::Submitted {
                created: true,
                state: JobState::Queued,
                ..
            },
            BatchAnswer::Refused {
                error: ErrorBody {
                    code: ErrorCode::InvalidRequest,
                    ..
                }
            }
        ]
    ));
}

/// The JSON shapes documented in docs/protocol.md parse as documented.
#[test]
fn documented_examples_parse() {
    let ev: ServerMsg = Codec::Json
        .decode(br#"{"job_id":"job_0123456789abcdef0123456789abcdef","seq":5,"at_ms":1700000000000,"type":"progress","value":3,"max":10,"label":"KSampler"}"#)
        .expect("progress event");
    match ev {
        ServerMsg::Event(e) => {
            assert_eq!(e.seq, Seq(5));
            assert_eq!(
                e.kind,
                EventKind::Progress {
                    value: 3,
                    max: 10,
                    label: Some("KSampler".into())
                }
            );
        }
        other => panic!("expected event, got {other:?}"),
    }
    let hb: ServerMsg = Codec::Json
        .decode(br#"{"type":"heartbeat","jobs":{"job_0123456789abcdef0123456789abcdef":7}}"#)
        .expect("heartbeat");
    assert!(matches!(hb, ServerMsg::Control(Control::Heartbeat { .. })));
    // A live queue place: a control message, not an event (no seq).
    let place: ServerMsg = Codec::Json
        .decode(br#"{"type":"position","job_id":"job_0123456789abcdef0123456789abcdef","position":3,"reason":"waiting for input upl_0123456789abcdef0123456789abcdef"}"#)
        .expect("position");
    match place {
        ServerMsg::Control(Control::Position {
            position, reason, ..
        }) => {
            assert_eq!(position, 3);
            assert!(reason.is_some_and(|r| r.starts_with("waiting for input")));
        }
        other => panic!("expected a position message, got {other:?}"),
    }
    let bare: ServerMsg = Codec::Json
        .decode(
            br#"{"type":"position","job_id":"job_0123456789abcdef0123456789abcdef","position":0}"#,
        )
        .expect("position without a reason");
    assert!(matches!(
        bare,
        ServerMsg::Control(Control::Position {
            position: 0,
            reason: None,
            ..
        })
    ));
    let failed: ServerMsg = Codec::Json
        .decode(br#"{"job_id":"job_0123456789abcdef0123456789abcdef","seq":9,"at_ms":1,"type":"failed","code":"command_failed","message":"exit status 2","detail":{"exit_status":2}}"#)
        .expect("failed event");
    assert!(matches!(
        failed,
        ServerMsg::Event(JobEvent {
            kind: EventKind::Failed(Failure {
                code: FailureCode::CommandFailed,
                ..
            }),
            ..
        })
    ));
}

/// A newer gateway's message type reaches a client built on this crate as `Control::Unknown`
/// (to ignore), in both codecs; a known type with bad fields is still an error.
#[test]
fn a_server_message_of_an_unknown_type_decodes_as_unknown_in_both_codecs() {
    let future = serde_json::json!({"type": "from_a_newer_gateway", "job_id": "x", "n": 3});
    let json = serde_json::to_vec(&future).expect("json");
    let msgpack = rmp_serde::to_vec_named(&future).expect("msgpack");
    for (codec, bytes) in [(Codec::Json, json), (Codec::MsgPack, msgpack)] {
        let msg: ServerMsg = codec.decode(&bytes).expect("decodes");
        assert_eq!(msg, ServerMsg::Control(Control::Unknown), "{codec:?}");
    }
    let bad =
        serde_json::to_vec(&serde_json::json!({"type": "welcome", "protocol": 1})).expect("json");
    assert!(
        Codec::Json.decode::<ServerMsg>(&bad).is_err(),
        "a bad welcome"
    );
}
