//! Address to function names, on the dump thread only, each address resolved once per process.
//!
//! Names come from `backtrace::resolve` (DWARF when the binary has debug info, else the symbol
//! table that release builds keep), demangled for Rust (without the hash) and C++. Inlined
//! functions come back innermost first, which is pprof's order for a location's lines.

use std::collections::HashMap;
use std::sync::Arc;

use crate::objects::LoadedObject;
use crate::pprof::FrameInfo;

/// The resolved frames of one address, innermost first.
pub(crate) type Frames = Arc<[FrameInfo]>;

/// A cache of resolved addresses.
#[derive(Default)]
pub(crate) struct Symbolizer {
    cache: HashMap<u64, Frames>,
}

fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Symbolizer {
    /// Frames for `addr` (a lookup address: pc, or return address minus one).
    pub(crate) fn resolve(&mut self, addr: u64, objects: &[LoadedObject]) -> Frames {
        if let Some(f) = self.cache.get(&addr) {
            return f.clone();
        }
        let mut frames = Vec::new();
        backtrace::resolve(addr as usize as *mut std::ffi::c_void, |sym| {
            let Some(name) = sym.name() else { return };
            frames.push(FrameInfo {
                name: format!("{name:#}"),
                file: sym.filename().map(|p| p.display().to_string()),
                line: sym.lineno().unwrap_or(0),
            });
        });
        if frames.is_empty() {
            let name = match objects.iter().find(|o| o.text.contains(&addr)) {
                Some(o) => format!("{}+{:#x}", short_path(&o.path), addr - o.bias),
                None => format!("{addr:#x}"),
            };
            frames.push(FrameInfo {
                name,
                file: None,
                line: 0,
            });
        }
        let frames: Frames = frames.into();
        self.cache.insert(addr, frames.clone());
        frames
    }

    /// Number of cached addresses.
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}
