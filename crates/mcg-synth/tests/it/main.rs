//! Integration tests of mcg-synth: one binary, one module per topic.

mod atoms;
mod density;
mod hsp90;
