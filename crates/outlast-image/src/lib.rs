//! Client-side photo preparation: orient, downscale, compress, strip metadata.
//!
//! Skeleton: the image issue fills this crate in.
