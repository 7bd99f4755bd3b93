//! Handing memory back to the system when a model version retires.
//!
//! A version's sessions hold tens of megabytes, allocated on the thread that
//! loaded it and freed at once when its last request ends. glibc keeps freed
//! memory in the arena of the thread that allocated it, and every load runs
//! on a thread of its own, so without a trim each load/unload cycle leaves its
//! pages behind: measured over twenty cycles, resident memory grew 38% (by
//! version) and 127% (whole model), and one `malloc_trim` brought it back.

/// Dropped last in a `Model`, after its backend: the trim then sees the
/// sessions' memory freed.
#[derive(Debug, Default)]
pub struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        // Trimming walks every arena (milliseconds): never on a runtime worker.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(trim);
            }
            // A slot thread may drop a version's last batch: not there either.
            Err(_) => {
                let _ = std::thread::Builder::new()
                    .name("inferd-trim".into())
                    .spawn(trim);
            }
        }
    }
}

/// Returns free heap pages to the system.
// Unsafe: a libc call with no Rust wrapper; see SAFETY.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's mmap threshold at its initial 128 KiB, unless the operator
/// set `MALLOC_MMAP_THRESHOLD_`. glibc raises the threshold to the size of the
/// largest mmapped block freed, after which a graph's large buffers land on
/// the heap, where freeing them keeps the pages: over twenty load/unload
/// cycles that alone grew resident memory 5-13%, against about 1% with the
/// threshold fixed. The cost: each allocation over 128 KiB (large request
/// bodies, big batches) is its own mmap. Call once, at process start, before
/// other threads exist.
// Unsafe: a libc call with no Rust wrapper; see SAFETY.
#[allow(unsafe_code)]
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}
