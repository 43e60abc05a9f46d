//! Giving the process's freed heap back to the kernel.

/// Returns the heap memory the allocator holds free to the kernel, so that it stops counting
/// as the server's resident memory. Worth calling after a burst of short-lived allocations,
/// such as reading every deployed function at start: glibc keeps what was freed for reuse, and
/// with 10,000 functions that is megabytes no request will need. Does nothing where the C
/// library is not glibc.
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's own free lists,
    // under the allocator's lock; it is safe to call from any thread at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}
