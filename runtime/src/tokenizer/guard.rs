//! Panics of the `tokenizers` library on user files, caught and kept off stderr.
//!
//! A process-wide panic hook is installed once; it forwards to the hook that was in place before,
//! except on a thread that is inside [`catch`], where the panic becomes an error value instead.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`; a panic inside it is returned as `Err(message)` and not printed. For calls into
/// libraries that may panic on user files.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    // The tokenizer is only read by the calls run here; a panic leaves nothing half-updated
    // that a later call would see (its caches are behind non-poisoning `try_` locks).
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch(|| 3), Ok(3));
        assert_eq!(catch(|| -> u8 { panic!("boom {}", 7) }), Err("boom 7".to_string()));
        assert_eq!(catch(|| -> u8 { std::panic::panic_any(5u32) }), Err("a panic without a message".to_string()));
        assert!(!QUIET.with(Cell::get));
    }
}
