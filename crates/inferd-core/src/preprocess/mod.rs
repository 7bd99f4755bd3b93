//! Preprocessing: what turns a client's raw input into the text or numbers a model
//! was trained on. It is part of a model version, not of a client: the manifest
//! declares which preprocessing a version expects, and the server applies it before
//! the model sees the input. Each kind is implemented once, here; training calls the
//! same code through `inferd preprocess`, so the text a model learns from and the
//! text it is served cannot drift apart.

pub mod email;
pub mod series;
