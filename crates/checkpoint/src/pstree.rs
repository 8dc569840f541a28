//! The tasks CRIU dumped, as its `pstree.img` lists them: every process of the tree with its
//! threads, at the moment of the dump. A tree that forks between the inspection and the dump (a
//! shell's `sleep 1`, a server's new worker) has pids the inspection never saw; the restore
//! needs every one of them free, so the map lists these.
//!
//! ```text
//! pstree.img:  u32 IMG_COMMON_MAGIC 0x54564319 | u32 PSTREE_MAGIC 0x50273030
//!              { u32 len | pstree_entry { pid, ppid, pgid, sid, threads[] } } ... to the end
//! ```

use std::path::Path;

use prost::Message;

use crate::images::{le_word, ImageError, IMG_COMMON_MAGIC};

const PSTREE_MAGIC: u32 = 0x5027_3030;

/// `pstree_entry` of `images/pstree.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct PstreeEntry {
    /// The task's pid.
    #[prost(uint32, required, tag = "1")]
    pub pid: u32,
    /// Its parent's.
    #[prost(uint32, required, tag = "2")]
    pub ppid: u32,
    /// Process group.
    #[prost(uint32, required, tag = "3")]
    pub pgid: u32,
    /// Session.
    #[prost(uint32, required, tag = "4")]
    pub sid: u32,
    /// Thread ids, the task's own pid among them.
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    pub threads: Vec<u32>,
}

/// The dumped tasks' pids, in the image's order (the root first), and the ids of their other
/// threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpedIds {
    /// One per process.
    pub pids: Vec<i32>,
    /// Threads that are not a process's main thread.
    pub threads: Vec<i32>,
}

/// Reads `pstree.img` in `images`.
pub fn dumped_ids(images: &Path) -> Result<DumpedIds, ImageError> {
    let path = images.join("pstree.img");
    let bytes = std::fs::read(&path).map_err(|source| ImageError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&bytes).map_err(|reason| ImageError::Format {
        path,
        reason: reason.into(),
    })
}

fn parse(bytes: &[u8]) -> Result<DumpedIds, &'static str> {
    let word = |at: usize| le_word(bytes, at);
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(PSTREE_MAGIC) {
        return Err("bad magic");
    }
    let mut ids = DumpedIds::default();
    let mut at = 8;
    while at < bytes.len() {
        let len = word(at).ok_or("truncated length")? as usize;
        let entry = bytes.get(at + 4..at + 4 + len).ok_or("truncated entry")?;
        let entry = PstreeEntry::decode(entry).map_err(|_| "not a pstree entry")?;
        let pid = i32::try_from(entry.pid).map_err(|_| "pid out of range")?;
        ids.pids.push(pid);
        for tid in entry.threads {
            let tid = i32::try_from(tid).map_err(|_| "thread id out of range")?;
            if tid != pid {
                ids.threads.push(tid);
            }
        }
        at += 4 + len;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{image_start, put_entry};

    fn entry(pid: u32, ppid: u32, threads: &[u32]) -> Vec<u8> {
        PstreeEntry {
            pid,
            ppid,
            pgid: 634,
            sid: 634,
            threads: threads.to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn every_dumped_process_and_thread_is_listed() {
        let mut img = image_start(PSTREE_MAGIC, 64);
        put_entry(&mut img, &entry(634, 1, &[634])).unwrap();
        put_entry(&mut img, &entry(1613, 634, &[1613])).unwrap();
        put_entry(&mut img, &entry(700, 634, &[700, 701, 702])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pstree.img"), &img).unwrap();
        let ids = dumped_ids(dir.path()).unwrap();
        assert_eq!(ids.pids, [634, 1613, 700]);
        assert_eq!(ids.threads, [701, 702]);
    }

    #[test]
    fn damage_is_an_error() {
        let mut img = image_start(PSTREE_MAGIC, 64);
        put_entry(&mut img, &entry(634, 1, &[634])).unwrap();
        assert_eq!(parse(&img[..img.len() - 1]), Err("truncated entry"));
        assert_eq!(parse(&image_start(0x1234, 8)), Err("bad magic"));
        assert_eq!(
            parse(&image_start(PSTREE_MAGIC, 8)),
            Ok(DumpedIds::default())
        );
    }
}
