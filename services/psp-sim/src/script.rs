//! Scripted outcomes, the simulator's test cards: a payment whose `metadata.sim` names one of
//! these gets that outcome deterministically, and random faults leave it alone.

use crate::faults::Fault;

/// A deterministic outcome requested through `metadata.sim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    /// Declined with `card_declined`; no money moves.
    Decline,
    /// The first POST charges and records, then its answer is dropped.
    LostResponse,
    /// The first POST is neither processed nor answered.
    Timeout,
    /// The first POST answers 500 without processing.
    ErrorOnce,
    /// Charged normally but never listed in a settlement file.
    NeverSettle,
}

impl Script {
    /// Every accepted `metadata.sim` value, for error messages.
    pub(crate) const NAMES: &'static str =
        "decline, lost_response, timeout, error_once, never_settle";

    /// Reads a `metadata.sim` value; `None` when it names no script.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "decline" => Some(Self::Decline),
            "lost_response" => Some(Self::LostResponse),
            "timeout" => Some(Self::Timeout),
            "error_once" => Some(Self::ErrorOnce),
            "never_settle" => Some(Self::NeverSettle),
            _ => None,
        }
    }

    /// The fault met by the first POST of the key before anything is processed, if any.
    /// Such scripts need the store to count POSTs, since "first" must survive restarts.
    pub(crate) fn first_post_fault(self) -> Option<Fault> {
        match self {
            Self::Timeout => Some(Fault::Timeout),
            Self::ErrorOnce => Some(Fault::Error),
            Self::Decline | Self::LostResponse | Self::NeverSettle => None,
        }
    }

    /// Whether the POST that creates the charge loses its answer.
    pub(crate) fn loses_first_answer(self) -> bool {
        self == Self::LostResponse
    }

    /// Whether a new payment under this script is declined.
    pub(crate) fn declines(self) -> bool {
        self == Self::Decline
    }

    /// Whether the charge appears in settlement files.
    pub(crate) fn settles(self) -> bool {
        self != Self::NeverSettle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses() {
        for name in Script::NAMES.split(", ") {
            assert!(Script::parse(name).is_some(), "{name}");
        }
        assert_eq!(Script::parse("Decline"), None);
    }

    #[test]
    fn only_timeout_and_error_once_fault_before_processing() {
        assert_eq!(Script::Timeout.first_post_fault(), Some(Fault::Timeout));
        assert_eq!(Script::ErrorOnce.first_post_fault(), Some(Fault::Error));
        assert_eq!(Script::LostResponse.first_post_fault(), None);
        assert!(Script::LostResponse.loses_first_answer());
        assert!(!Script::NeverSettle.settles());
        assert!(Script::Decline.declines());
    }
}
