//! Spreading row bands over the cores the caller allows.
//!
//! Natively [`install`] runs the whole pipeline inside a rayon pool of
//! `Options::threads` workers, and [`map`] hands the bands of one step to
//! that pool. On wasm32 both run on the calling thread, in order: the
//! browser build stays single-threaded.
//!
//! Work is always cut into the same bands whatever the thread count, so the
//! output bytes do not depend on it.

/// Threads used when the caller gives no count: every core the OS offers us.
pub(crate) fn available() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// Workers in the current pool (1 on wasm32).
pub(crate) fn current() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// Runs `f` with `threads` workers available to [`map`] (and to the
/// resampler's own splitting). If the pool cannot be built (the OS refuses
/// threads), `f` still runs, on the calling thread and rayon's global pool.
pub(crate) fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("outlast-image-{i}"))
            .build()
        {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = threads;
        f()
    }
}

/// `f` applied to every item, results in item order; natively the items
/// are spread over the current pool.
pub(crate) fn map<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        items.into_par_iter().map(f).collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        items.into_iter().map(f).collect()
    }
}
