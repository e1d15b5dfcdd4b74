//! The multicryogan HDF5 particle-set container (being written).
