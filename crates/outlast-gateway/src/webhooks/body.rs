//! The JSON body of a webhook: `{type, timestamp, data}` as the Standard Webhooks spec
//! suggests. `data` carries the job id, the event's seq, the job's state and, for a completed
//! job, its outputs as URLs with size and sha256: never output bytes.

use outlast_protocol::EventKind;
use serde_json::{Value, json};

use crate::store::Delivery;

/// The body bytes of `delivery`. Built from the frozen delivery only, so every attempt and a
/// resend send the same bytes. `public_url` makes output URLs absolute.
pub fn body(delivery: &Delivery, public_url: Option<&str>) -> Vec<u8> {
    let job = delivery.job.to_string();
    let base = public_url.unwrap_or("").trim_end_matches('/');
    let event = &delivery.source;
    let mut data = json!({
        "job_id": job,
        "seq": event.seq.0,
        "state": delivery.state.as_str(),
        "at_ms": event.at_ms,
        "job_url": format!("{base}/v1/jobs/{job}"),
        "events_url": format!("{base}/v1/jobs/{job}/events?after={}", event.seq.0),
    });
    let extra = match &event.kind {
        EventKind::Completed { cached } => json!({
            "cached": cached,
            "outputs": delivery.outputs.iter().map(|o| json!({
                "name": o.name,
                "mime": o.mime,
                "size": o.size,
                "sha256": o.sha256,
                "url": format!("{base}/v1/jobs/{job}/outputs/{}", encode_segment(&o.name)),
            })).collect::<Vec<_>>(),
        }),
        EventKind::Failed(f) => json!({
            "failure": {"code": f.code, "message": f.message},
        }),
        EventKind::Canceled { reason } => json!({ "reason": reason }),
        EventKind::Progress { value, max, label } => json!({
            "progress": {"value": value, "max": max, "label": label},
        }),
        _ => json!({}),
    };
    if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
        d.extend(e);
    }
    let timestamp = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.at_ms),
    )
    .to_string();
    let body = json!({
        "type": delivery.event.type_name(),
        "timestamp": timestamp,
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_segment;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("out 1/ä.png"), "out%201%2F%C3%A4.png");
        assert_eq!(encode_segment("a-b_c.~d"), "a-b_c.~d");
    }
}
