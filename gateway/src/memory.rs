//! Memory the gateway hands back: after a bound is breached (an upstream's endless event, a
//! client that stopped reading), what the breach made the gateway hold is returned to the
//! operating system, so an attack does not leave the process larger for good.

/// Buffers of at least this size get their own mapping from the allocator, returned to the
/// operating system the moment they are freed.
const OWN_MAPPING_FROM: usize = 1024 * 1024;

/// Makes large buffers go back to the operating system when freed. glibc raises its mmap
/// threshold to the largest block freed (up to 32 MiB), after which a buffer of up to a
/// bound's worth (16 MiB by default) comes from an arena whose freed top is kept: one breach
/// would leave the gateway that much larger for good. A fixed threshold (which also turns off
/// that adjustment) keeps every buffer of 1 MiB or more in a mapping of its own. Call once, at
/// start-up. An operator who set glibc's own `MALLOC_MMAP_THRESHOLD_` keeps that value.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before the
        // runtime starts its threads.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM as libc::c_int);
        }
    }
}

/// Drops what a breach left behind (`held`: a buffer, a stream and its parser) and hands the
/// freed memory back to the operating system: large buffers go with their mapping (see
/// [`tune_allocator`]), and a trim returns the free pages of smaller ones. A breach is rare and
/// already cost reading a whole bound, so the trim (off the async workers) costs little in
/// comparison.
pub fn give_back<T>(held: T) {
    drop(held);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(|| {
            // SAFETY: malloc_trim only returns free pages of glibc's own arenas to the OS.
            unsafe { libc::malloc_trim(0) };
        });
    }
}
