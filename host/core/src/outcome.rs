//! How an attempt ended: the one list of outcome kinds, which the sandbox produces, the store
//! records (its schema checks each attempt against this list) and the CLI prints.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Ok,
    Exit,
    Trap,
    FuelExhausted,
    Timeout,
    Memory,
    OutputTooLarge,
    LoadError,
    /// The worker running the attempt died or stopped heartbeating; recorded by the reaper.
    WorkerLost,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 9] = [
        OutcomeKind::Ok,
        OutcomeKind::Exit,
        OutcomeKind::Trap,
        OutcomeKind::FuelExhausted,
        OutcomeKind::Timeout,
        OutcomeKind::Memory,
        OutcomeKind::OutputTooLarge,
        OutcomeKind::LoadError,
        OutcomeKind::WorkerLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Exit => "exit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::FuelExhausted => "fuel_exhausted",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Memory => "memory",
            OutcomeKind::OutputTooLarge => "output_too_large",
            OutcomeKind::LoadError => "load_error",
            OutcomeKind::WorkerLost => "worker_lost",
        }
    }

    /// The kind named `text` ([`OutcomeKind::as_str`]); `None` for a name not on the list.
    pub fn parse(text: &str) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_form_and_distinct() {
        let names: std::collections::BTreeSet<&str> = OutcomeKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(names.len(), OutcomeKind::ALL.len());
        for kind in OutcomeKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn every_name_parses_back_and_no_other_text_does() {
        for kind in OutcomeKind::ALL {
            assert_eq!(OutcomeKind::parse(kind.as_str()), Some(kind));
        }
        for unknown in ["", "OK", "lost", "fuel exhausted", "ok "] {
            assert_eq!(OutcomeKind::parse(unknown), None, "{unknown:?}");
        }
    }
}
