//! Projections of rigid-body conformations (being written).
