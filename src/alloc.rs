//! The binary's global allocator: small Rust blocks from mimalloc, large
//! ones from glibc (see `SplitAlloc`), and the call that hands mimalloc's
//! free pages back for `inferd_core::memory::trim`.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Rust's small blocks from mimalloc, large ones from glibc. Every request
/// allocates and frees some seventy small blocks, often on different
/// threads, and glibc's malloc and free were 9% of a miss-path request's
/// instructions: with mimalloc, measured for issue 27, 4-6% fewer
/// instructions per LSTM request and up to 13% less CPU per request at
/// 16-256 connections. Large blocks (request bodies, batches, read buffers)
/// stay with glibc, whose fixed mmap threshold and `malloc_trim` give memory
/// back after a flood: with mimalloc for every size, resident memory stayed
/// at twice its idle size after the memory-budget flood test. C and C++
/// libraries (ONNX Runtime) use glibc's allocator anyway.
struct SplitAlloc;

#[global_allocator]
static GLOBAL: SplitAlloc = SplitAlloc;

/// Blocks of at most this many bytes go to mimalloc.
const SMALL_BLOCK: usize = 4096;

fn small(layout: Layout) -> bool {
    layout.size() <= SMALL_BLOCK
}

// Unsafe: a global allocator is an unsafe trait; each call forwards to the
// allocator that the block's size picks, so a block is always freed by the
// allocator that made it (`dealloc` and `realloc` get the size it was made
// with).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if small(layout) {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if small(layout) {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so `small`
        // picks the allocator that made it.
        unsafe {
            if small(layout) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout`'s alignment
        // is a valid layout; a block that changes side is moved by hand.
        unsafe {
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            match (small(layout), small(new)) {
                (true, true) => MiMalloc.realloc(ptr, layout, new_size),
                (false, false) => System.realloc(ptr, layout, new_size),
                _ => {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// Hands mimalloc's free pages back to the system.
// Unsafe: a C call with no safe wrapper; see SAFETY.
#[allow(unsafe_code)]
pub(crate) fn release_mimalloc() {
    // SAFETY: mi_collect frees only memory mimalloc holds free; it touches no
    // live allocation, and may run on any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
