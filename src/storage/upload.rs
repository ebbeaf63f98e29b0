//! Uploads of files that appear only when finished: part files and change sets written to a
//! bucket. A file is buffered until it passes one part's size, then sent as a multipart upload
//! while it is still being written (parts in flight bounded), and completed at the end; a small
//! file goes up in one PUT. Either way the object appears whole at completion, never half.

use std::io::Write;
use std::sync::OnceLock;

use anyhow::Result;
use bytes::Bytes;
use object_store::{UpdateVersion, WriteMultipart};

use super::object::{block_on, runtime, ObjectLocation, Version};

/// Upload part size; files smaller than this go up in one PUT.
const UPLOAD_CHUNK: usize = 8 << 20;
/// Parts of one upload in flight at once.
const UPLOAD_IN_FLIGHT: usize = 4;

/// The upload part size (`BATCH_EMBED_UPLOAD_CHUNK` overrides it, for tests of multipart
/// uploads against a server that allows small parts).
fn upload_chunk() -> usize {
    static CHUNK: OnceLock<usize> = OnceLock::new();
    *CHUNK.get_or_init(|| {
        std::env::var("BATCH_EMBED_UPLOAD_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(UPLOAD_CHUNK)
    })
}

/// A file being uploaded: buffered until it passes one part's size, then sent in parts
/// ([`UPLOAD_IN_FLIGHT`] at a time) while it is written; [`Upload::finish`] sends the rest and
/// completes it (or sends a small file in one PUT). Dropped unfinished, the upload is aborted.
pub struct Upload {
    location: ObjectLocation,
    buffer: Vec<u8>,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl Upload {
    pub(super) fn new(location: ObjectLocation) -> Self {
        Upload { location, buffer: Vec::new(), multipart: None, written: 0 }
    }

    pub fn location(&self) -> &ObjectLocation {
        &self.location
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn start_multipart(&mut self) -> Result<()> {
        let upload = self.location.put_multipart()?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, upload_chunk());
        let _in_runtime = runtime().enter();
        parts.write(&std::mem::take(&mut self.buffer));
        self.multipart = Some(parts);
        Ok(())
    }

    /// Makes the object appear, whole.
    pub fn finish(mut self) -> Result<Version> {
        match self.multipart.take() {
            None => self.location.put(Bytes::from(std::mem::take(&mut self.buffer))),
            Some(parts) => {
                ObjectLocation::count_multipart(self.written.div_ceil(upload_chunk() as u64), self.written);
                let r = block_on(parts.finish()).map_err(|e| self.location.error("cannot write", e))?;
                Ok(Version(UpdateVersion { e_tag: r.e_tag, version: r.version }))
            }
        }
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        match &mut self.multipart {
            None => {
                self.buffer.extend_from_slice(buf);
                if self.buffer.len() >= upload_chunk() {
                    self.start_multipart().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                }
            }
            Some(parts) => {
                block_on(parts.wait_for_capacity(UPLOAD_IN_FLIGHT)).map_err(|e| {
                    std::io::Error::other(format!("{:#}", self.location.error("cannot write", e)))
                })?;
                let _in_runtime = runtime().enter();
                parts.write(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(parts) = self.multipart.take() {
            // Best effort: an aborted upload leaves nothing behind (a killed process leaves an
            // incomplete upload, invisible but kept until a lifecycle rule removes it).
            let _ = block_on(parts.abort());
        }
    }
}
