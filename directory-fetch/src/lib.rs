//! # spore-directory-fetch
//!
//! The one place relays (`spore-relay`) and clients (`spore-client`) read the signed directory
//! from: a file the authorities' tool writes, or one or more authority or mirror URLs
//! (`spore authority run`, `spore directory serve`). [`DirectoryFetcher`] is what every reader
//! runs: sources in turn, threshold verification, the last good document kept on disk, and the
//! next fetch scheduled ahead of expiry ([`next_refresh`]).
//! It sits before [`spore_protocol::directory`] in the data path: this crate only gets bytes;
//! parsing and threshold verification ([`spore_protocol::directory::Trust`]) happen there,
//! and each reader keeps its own view of the verified result.
//!
//! The HTTP client is a minimal HTTP/1.0 `GET` over a tokio socket rather than hyper, so the
//! client library stays free of an HTTP stack: the document is signed and verified by
//! threshold, so the transport only has to deliver bytes.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod fetcher;
mod http;
mod source;

pub use config::DirectoryConfig;
pub use fetcher::{
    DirectoryFetcher, MIN_REFRESH, VerifiedDirectory, next_refresh, write_private_atomic,
};
pub use http::{
    HTTP_TIMEOUT, HttpAnswer, MAX_DIRECTORY_BYTES, format_http_date, get_answer, parse_http_date,
    post,
};
pub use source::{DirectorySource, FetchError, MemoryDirectory};
