// Copyright 2020 Nym Technologies SA
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// the deny-level lint set lives in `[workspace.lints.clippy]`; tests are allowed to panic
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

pub mod constants;
pub mod crypto;
pub mod header;
pub mod packet;
pub mod payload;
pub mod route;
pub mod surb;
mod utils;

// cleaned-up modules + imports here:
pub mod error;

#[cfg(test)]
pub mod test_utils;
pub mod version;

pub use crate::error::{Error, ErrorKind, Result};
pub use crate::packet::{
    builder::SphinxPacketBuilder, ProcessedPacket, ProcessedPacketData, SphinxPacket,
};
pub use crate::surb::{SURBMaterial, SurbReplyRecovery, SURB};
