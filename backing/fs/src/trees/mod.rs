//! [`FileTree`](crate::FileTree) implementations that are not file systems
//! on a disk image: a confined host directory and an in-memory tree.

mod host_dir;
mod memory;

pub use host_dir::HostDirTree;
pub use memory::{MemoryTree, MemoryTreeBuilder};
