//! An in-memory [`FileTree`], built programmatically; used by tests and
//! demos.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::tree::{FileExtent, FileTree, Metadata, TreeError, TreePath};

#[derive(Debug, Clone)]
enum Node {
    File(Arc<[u8]>),
    Dir(BTreeMap<String, Node>),
}

impl Node {
    fn metadata(&self) -> Metadata {
        match self {
            Node::File(bytes) => Metadata::file(bytes.len() as u64),
            Node::Dir(_) => Metadata::directory(),
        }
    }
}

/// A read-only tree held in memory. Names are case-sensitive.
#[derive(Debug, Clone)]
pub struct MemoryTree {
    root: Node,
}

/// Builds a [`MemoryTree`]; parent directories are created as needed.
#[derive(Debug, Default)]
pub struct MemoryTreeBuilder {
    root: BTreeMap<String, Node>,
}

impl MemoryTreeBuilder {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file with these bytes at `path` (replacing a file already
    /// there); fails when a component on the way is a file or `path` is a
    /// directory.
    pub fn add_file(
        &mut self,
        path: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, TreeError> {
        let path = TreePath::parse(path);
        let Some((name, parents)) = path.components().split_last() else {
            return Err(TreeError::IsADirectory("/".into()));
        };
        let dir = self.dir_mut(parents, &path)?;
        if let Some(Node::Dir(_)) = dir.get(name) {
            return Err(TreeError::IsADirectory(path.to_string()));
        }
        dir.insert(name.clone(), Node::File(bytes.into().into()));
        Ok(self)
    }

    /// Adds a directory at `path` (and its parents); fails when a component
    /// is a file.
    pub fn add_dir(&mut self, path: &str) -> Result<&mut Self, TreeError> {
        let path = TreePath::parse(path);
        self.dir_mut(path.components(), &path)?;
        Ok(self)
    }

    fn dir_mut(
        &mut self,
        components: &[String],
        whole: &TreePath,
    ) -> Result<&mut BTreeMap<String, Node>, TreeError> {
        let mut dir = &mut self.root;
        for name in components {
            let node = dir
                .entry(name.clone())
                .or_insert_with(|| Node::Dir(BTreeMap::new()));
            dir = match node {
                Node::Dir(children) => children,
                Node::File(_) => return Err(TreeError::NotADirectory(whole.to_string())),
            };
        }
        Ok(dir)
    }

    /// The finished tree.
    pub fn build(&self) -> MemoryTree {
        MemoryTree {
            root: Node::Dir(self.root.clone()),
        }
    }
}

impl MemoryTree {
    /// Starts building a tree.
    pub fn builder() -> MemoryTreeBuilder {
        MemoryTreeBuilder::new()
    }

    fn node(&self, path: &TreePath) -> Result<&Node, TreeError> {
        let mut node = &self.root;
        for name in path.components() {
            node = match node {
                Node::Dir(children) => children
                    .get(name)
                    .ok_or_else(|| TreeError::NotFound(path.to_string()))?,
                Node::File(_) => return Err(TreeError::NotADirectory(path.to_string())),
            };
        }
        Ok(node)
    }
}

impl MemoryTree {
    /// Up to `len` bytes of the file at `path` from `offset`, cut at its
    /// end.
    fn file_bytes(&self, path: &TreePath, offset: u64, len: u64) -> Result<&[u8], TreeError> {
        match self.node(path)? {
            Node::Dir(_) => Err(TreeError::IsADirectory(path.to_string())),
            Node::File(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - start);
                Ok(&bytes[start..start + n])
            }
        }
    }
}

impl FileTree for MemoryTree {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        Ok(self.node(path)?.metadata())
    }

    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let bytes = self.file_bytes(path, offset, buf.len() as u64)?;
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(bytes.len())
    }

    fn locate(
        &self,
        path: &TreePath,
        offset: u64,
        len: u64,
    ) -> Result<Option<FileExtent<'_>>, TreeError> {
        Ok(Some(FileExtent::Bytes(self.file_bytes(path, offset, len)?)))
    }

    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        match self.node(path)? {
            Node::File(_) => Err(TreeError::NotADirectory(path.to_string())),
            Node::Dir(children) => Ok(children
                .iter()
                .map(|(name, node)| (name.clone(), node.metadata()))
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_lends_the_asked_bytes_cut_at_the_end_of_the_file() {
        let mut builder = MemoryTree::builder();
        builder.add_file("d/f", b"abcdef".to_vec()).unwrap();
        let tree = builder.build();
        let file = TreePath::parse("d/f");
        let bytes = |offset, len| match tree.locate(&file, offset, len).unwrap() {
            Some(FileExtent::Bytes(b)) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bytes(2, 3), b"cde");
        assert_eq!(bytes(4, 100), b"ef");
        assert_eq!(bytes(6, 1), b"");
        assert_eq!(bytes(u64::MAX, u64::MAX), b"");
        assert!(matches!(
            tree.locate(&TreePath::parse("d"), 0, 1),
            Err(TreeError::IsADirectory(_))
        ));
    }
}
