//! Conformational-landscape descriptions (being written).
