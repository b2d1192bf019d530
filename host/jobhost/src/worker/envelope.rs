//! The input of a processor that reads its parents' results (`processors.overrides.NAME.input:
//! envelope`): `{"payload": PAYLOAD, "parents": {"ID": RESULT, …}}`.
//!
//! The payload and each result go in as the JSON text they were stored as, so numbers and
//! key order arrive exactly as they were written; text that is not JSON (a row written
//! before payloads were checked) goes in as a JSON string rather than breaking the input.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use jobhost_store::ParentResult;

#[derive(Serialize)]
struct Envelope<'a> {
    payload: &'a RawValue,
    parents: BTreeMap<&'a str, Box<RawValue>>,
}

/// The envelope of a job with `payload` whose parents are `parents` (its own, as
/// [`jobhost_store::Store::parent_results`] reads them); a parent with no result has `null`.
pub fn wrap(payload: &str, parents: &[&ParentResult]) -> String {
    let payload = json_or_string(Some(payload));
    let parents = parents.iter().map(|parent| (parent.parent_id.as_str(), json_or_string(parent.result.as_deref())));
    let envelope = Envelope { payload: &payload, parents: parents.collect() };
    serde_json::to_string(&envelope).expect("raw JSON values serialize")
}

fn json_or_string(text: Option<&str>) -> Box<RawValue> {
    let Some(text) = text else {
        return RawValue::from_string("null".to_owned()).expect("null is JSON");
    };
    RawValue::from_string(text.trim().to_owned())
        .unwrap_or_else(|_| serde_json::value::to_raw_value(text).expect("a string serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(id: &str, result: Option<&str>) -> ParentResult {
        ParentResult { child_seq: 1, parent_id: id.into(), result: result.map(str::to_owned) }
    }

    #[test]
    fn the_payload_and_results_go_in_as_written_and_other_text_as_a_string() {
        let a = parent("a", Some(r#"{"n": 12345678901234567890}"#));
        let b = parent("b", Some("not json"));
        let c = parent("c", None);
        assert_eq!(
            wrap(r#"{"z": 1, "a": 1.50}"#, &[&b, &a, &c]),
            r#"{"payload":{"z": 1, "a": 1.50},"parents":{"a":{"n": 12345678901234567890},"b":"not json","c":null}}"#
        );
        assert_eq!(wrap("[]", &[]), r#"{"payload":[],"parents":{}}"#);
    }
}
