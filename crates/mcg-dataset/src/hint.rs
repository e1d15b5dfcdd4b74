//! Hints: a likely fix carried by an error, shown as its last line.

/// The prefix of a hint's text; an error printer leaves hints out of the cause chain.
pub const HINT_PREFIX: &str = "hint: ";

/// A likely fix, shown as the last line of an error (attach it with [`WithHint`]).
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{HINT_PREFIX}{}", self.0)
    }
}

/// Attaches a hint to an error: `result.with_hint("…")`.
pub trait WithHint<T> {
    /// The error with `hint` as its outermost context.
    fn with_hint(self, hint: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> WithHint<T> for std::result::Result<T, E> {
    fn with_hint(self, hint: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| e.into().context(Hint(hint.into())))
    }
}
