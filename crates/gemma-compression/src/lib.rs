//! gemma-compression
