//! Writing a disk's bytes in order, with its zeros as holes where the
//! output can hold them.
//!
//! This module owns [`SparseWriter`]: the one place `dump` writes through.
//! A regular-file output gets every zero run of at least one
//! [`ZERO_BLOCK`] (told by the device, or found in the data) as a hole:
//! the writer seeks past it, positionally, and sets the length at the end
//! so trailing holes count. Standard output, pipes and devices get the
//! zeros written out. It also owns [`pipelined`], which writes on one
//! thread while the disk is read on another, and the progress bar of long
//! copies, shown only when stderr is a terminal.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{Output, OutputError};

/// Granularity of zero detection in data: a run of zeros becomes a hole
/// when it covers whole aligned blocks of this size (what a host file
/// system can deallocate, and what `qemu-img convert` looks for).
pub const ZERO_BLOCK: usize = 4096;

/// Bytes of a regular-file output written before their write-back to the
/// disk is started. The output is flushed before it is renamed into place;
/// started early, that flush waits for the last few MiB only, while
/// reading overlaps the rest.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Zeros written at a time where holes cannot be made.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Where the bytes go.
enum Sink {
    /// A regular file written positionally: zero runs are left as holes.
    Holes(File),
    /// A stream (standard output, a FIFO, a device): zeros are written.
    Stream(File),
}

/// An in-order writer of a disk's bytes that turns zero runs into holes
/// in a regular-file output.
pub struct SparseWriter {
    output: Output,
    sink: Sink,
    /// Bytes accounted for so far (written or left as holes).
    at: u64,
    /// Where the bytes whose write-back has not been started begin.
    writeback_from: u64,
    bar: Option<ProgressBar>,
}

impl SparseWriter {
    /// Writes into `output`, with a progress bar of `total` bytes when
    /// stderr is a terminal.
    pub fn new(output: Output, total: u64) -> Result<Self, OutputError> {
        let sink = match output.staged_file() {
            Some(file) => Sink::Holes(file.try_clone().map_err(|e| output.error(e))?),
            // Standard output and special files are written through their
            // descriptor, so large writes go straight to the kernel
            // (standard output's own writer scans for line ends).
            None => Sink::Stream(output.stream_file().map_err(|e| output.error(e))?),
        };
        Ok(Self {
            output,
            sink,
            at: 0,
            writeback_from: 0,
            bar: progress_bar(total),
        })
    }

    /// The next `len` bytes are zeros.
    fn write_zeros(&mut self, len: u64) -> Result<(), OutputError> {
        if let Sink::Stream(file) = &mut self.sink {
            let mut left = len;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                file.write_all(&ZEROS[..n])
                    .map_err(|e| self.output.error(e))?;
                left -= n as u64;
            }
        }
        self.advance(len);
        Ok(())
    }

    /// The next bytes are `data`: aligned zero blocks in it become holes.
    fn write_data(&mut self, data: &[u8]) -> Result<(), OutputError> {
        let Sink::Holes(file) = &self.sink else {
            return self.write_stream(data);
        };
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            let (zero, len) = zero_run(rest, self.at);
            if !zero {
                file.write_all_at(&rest[..len], self.at)
                    .map_err(|e| self.output.error(e))?;
            }
            done += len;
            // Not `advance`: `file` still borrows the sink.
            self.at += len as u64;
            if let Some(bar) = &self.bar {
                bar.inc(len as u64);
            }
        }
        if let Some(len) = std::num::NonZeroU64::new(self.at - self.writeback_from)
            .filter(|len| len.get() >= WRITEBACK_STEP)
        {
            // Advice only: "don't need" starts write-back of the dirty
            // pages (and drops them from the cache once written, which a
            // copy of a disk does not read again). Failure changes nothing
            // but speed.
            let _ = rustix::fs::fadvise(
                file,
                self.writeback_from,
                Some(len),
                rustix::fs::Advice::DontNeed,
            );
            self.writeback_from = self.at;
        }
        Ok(())
    }

    fn write_stream(&mut self, data: &[u8]) -> Result<(), OutputError> {
        if let Sink::Stream(file) = &mut self.sink {
            file.write_all(data).map_err(|e| self.output.error(e))?;
        }
        self.advance(data.len() as u64);
        Ok(())
    }

    fn advance(&mut self, len: u64) {
        self.at += len;
        if let Some(bar) = &self.bar {
            bar.inc(len);
        }
    }

    /// Sets the output's length (trailing holes count), and puts it in
    /// place.
    pub fn finish(self) -> Result<(), OutputError> {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Sink::Holes(file) = &self.sink {
            file.set_len(self.at).map_err(|e| self.output.error(e))?;
        }
        drop(self.sink);
        self.output.finish()
    }
}

/// Where a disk's bytes go, in order: zero runs said as such, so a sink
/// that can skip them does.
pub trait DiskSink {
    /// The next `len` bytes are zeros.
    fn zeros(&mut self, len: u64) -> Result<(), OutputError>;
    /// The next bytes are `data` (which may hold zeros too).
    fn data(&mut self, data: &[u8]) -> Result<(), OutputError>;
}

impl DiskSink for SparseWriter {
    fn zeros(&mut self, len: u64) -> Result<(), OutputError> {
        self.write_zeros(len)
    }
    fn data(&mut self, data: &[u8]) -> Result<(), OutputError> {
        self.write_data(data)
    }
}

/// The bytes in memory (the demo compares them with the image).
impl DiskSink for Vec<u8> {
    fn zeros(&mut self, len: u64) -> Result<(), OutputError> {
        // The demo's disks are small and in memory already.
        self.resize(self.len() + len as usize, 0);
        Ok(())
    }
    fn data(&mut self, data: &[u8]) -> Result<(), OutputError> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// Why a pipelined copy failed: reading (the producer's error) or writing.
#[derive(Debug)]
pub enum PipeError<E> {
    /// The producer failed.
    Produce(E),
    /// The sink failed.
    Write(OutputError),
}

/// A piece of the disk, in order.
enum Piece {
    /// This many zero bytes.
    Zeros(u64),
    /// The first `len` bytes of a buffer from [`Pipe::take`].
    Data(Vec<u8>, usize),
}

/// The producer's end of [`pipelined`]: buffers to fill and the way to
/// hand them, and zero runs, to the writer.
pub struct Pipe {
    pieces: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
}

impl Pipe {
    /// A buffer to fill, once the writer is done with it; `None` when the
    /// writer stopped (on an error it reports).
    pub fn take(&self) -> Option<Vec<u8>> {
        self.free.recv().ok()
    }

    /// Hands the first `len` bytes of `buf` to the writer; false when it
    /// stopped.
    pub fn data(&self, buf: Vec<u8>, len: usize) -> bool {
        self.pieces.send(Piece::Data(buf, len)).is_ok()
    }

    /// The next `len` bytes are zeros; false when the writer stopped.
    pub fn zeros(&self, len: u64) -> bool {
        self.pieces.send(Piece::Zeros(len)).is_ok()
    }
}

/// Runs `produce` (reading the disk) on this thread while another writes
/// what it hands over to `sink`, so reads and writes overlap; `buffers`
/// buffers of `size` bytes are allocated once and go round. A producer
/// that finds the pipe closed should stop: the writer's error is then
/// what is returned.
pub fn pipelined<E>(
    sink: &mut (dyn DiskSink + Send),
    buffers: usize,
    size: usize,
    produce: impl FnOnce(&Pipe) -> Result<(), E>,
) -> Result<(), PipeError<E>> {
    let (pieces, incoming) = sync_channel::<Piece>(buffers + 1);
    let (recycle, free) = sync_channel::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        // Cannot fail: the channel has room for every buffer.
        let _ = recycle.send(vec![0u8; size]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(), OutputError> {
            for piece in incoming {
                match piece {
                    Piece::Zeros(len) => sink.zeros(len)?,
                    Piece::Data(buf, len) => {
                        sink.data(buf.get(..len).unwrap_or(&buf))?;
                        let _ = recycle.send(buf);
                    }
                }
            }
            Ok(())
        });
        let pipe = Pipe { pieces, free };
        let produced = produce(&pipe);
        // Closing the pipe ends the writer's loop.
        drop(pipe);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.map_err(PipeError::Write)?;
        produced.map_err(PipeError::Produce)
    })
}

/// A progress bar of `total` bytes, when stderr is a terminal.
pub fn progress_bar(total: u64) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    })
}

/// The run at the start of `data` (which lands at output offset `at`):
/// `(true, len)` for whole zero blocks, `(false, len)` for bytes up to the
/// next zero block. Blocks are aligned to the output offset, the first and
/// last cut by the ends of `data`; a cut block is never a hole.
fn zero_run(data: &[u8], at: u64) -> (bool, usize) {
    // The block starting at `pos`: up to the next aligned output offset.
    let block_end = |pos: usize| {
        let into = ((at + pos as u64) % ZERO_BLOCK as u64) as usize;
        (pos + ZERO_BLOCK - into).min(data.len())
    };
    let is_hole = |b: &[u8]| b.len() == ZERO_BLOCK && is_zero(b);
    if data.is_empty() {
        return (false, 0);
    }
    let mut end = block_end(0);
    let zero = is_hole(&data[..end]);
    while end < data.len() {
        let next = block_end(end);
        if is_hole(&data[end..next]) != zero {
            break;
        }
        end = next;
    }
    (zero, end)
}

/// Whether every byte is zero (64 bytes at a time, which vectorises).
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::{ZERO_BLOCK, is_zero, zero_run};

    #[test]
    fn runs_split_at_aligned_zero_blocks() {
        let mut data = vec![1u8; 5 * ZERO_BLOCK];
        data[ZERO_BLOCK..3 * ZERO_BLOCK].fill(0);
        assert_eq!(zero_run(&data, 0), (false, ZERO_BLOCK));
        assert_eq!(zero_run(&data[ZERO_BLOCK..], 4096), (true, 2 * ZERO_BLOCK));
        assert_eq!(
            zero_run(&data[3 * ZERO_BLOCK..], 3 * 4096),
            (false, 2 * ZERO_BLOCK)
        );
    }

    #[test]
    fn unaligned_heads_and_short_tails_are_data() {
        let data = vec![0u8; 2 * ZERO_BLOCK];
        // Lands at 512: the 3584-byte head is data, then one whole zero
        // block, then a 512-byte tail that is data.
        assert_eq!(zero_run(&data, 512), (false, ZERO_BLOCK - 512));
        assert_eq!(
            zero_run(&data[ZERO_BLOCK - 512..], 4096),
            (true, ZERO_BLOCK)
        );
        assert_eq!(zero_run(&data[2 * ZERO_BLOCK - 512..], 8192), (false, 512));
        assert_eq!(zero_run(&[], 0), (false, 0));
    }

    #[test]
    fn zero_test_sees_a_late_byte() {
        let mut b = vec![0u8; 4096 + 3];
        assert!(is_zero(&b));
        b[4096 + 2] = 1;
        assert!(!is_zero(&b));
        b[4096 + 2] = 0;
        b[100] = 1;
        assert!(!is_zero(&b));
    }
}
