//! Address to function names, on the dump thread only, each address resolved once per process.
//!
//! Owns the address → frames cache and nothing else. Before a profile is built, the addresses
//! it needs that are not cached yet are resolved object by object: the object's file is
//! mapped, its symbol table read and, when the policy allows (`THREADPROF_DEBUGINFO`), its DWARF
//! parsed for the units those addresses fall in (inline frames, `file:line`); then everything
//! parsed is dropped and the file unmapped. Only the results stay, so memory grows with the
//! addresses seen, not with the size of the binaries' debug information, and a binary or
//! library loaded later is read when its addresses first appear.
//!
//! Names are demangled for Rust (without the hash) and C++. Inlined functions come back
//! innermost first, which is pprof's order for a location's lines. A file whose build id no
//! longer matches the loaded object (replaced on disk since) is not trusted: its addresses are
//! named `object+offset`, as addresses in no readable file are.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSymbol};

use crate::config::DebugInfo;
use crate::objects::LoadedObject;
use crate::pprof::FrameInfo;

/// The resolved frames of one address, innermost first.
pub(crate) type Frames = Arc<[FrameInfo]>;

/// Where separate debug files are looked up by build id.
const DEBUG_DIR: &str = "/usr/lib/debug/.build-id";

/// Least time between two DWARF parses of one object. Parsing a large binary's DWARF costs
/// tens to hundreds of ms; addresses that first appear in between are named from the symbol
/// table (cheap) and get their inline frames and lines at the next parse.
const DWARF_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// An object, as a key that survives its unloading: (path, load bias).
type ObjectKey = (String, u64);

/// A cache of resolved addresses.
#[derive(Default)]
pub(crate) struct Symbolizer {
    cache: HashMap<u64, Frames>,
    debuginfo: DebugInfo,
    /// When each object's DWARF was last parsed.
    last_dwarf: HashMap<ObjectKey, std::time::Instant>,
    /// Addresses named from the symbol table alone while their object's DWARF could not be
    /// parsed again yet: resolved again at its next parse.
    provisional: HashMap<ObjectKey, Vec<u64>>,
}

fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A Rust (legacy or v0) or C++ symbol, demangled; anything else as it is.
fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle() {
                return s;
            }
        }
    }
    name.to_owned()
}

/// A file mapped read-only for the time of one resolution.
struct Mapped(memmap2::Mmap);

impl Mapped {
    fn open(path: &str) -> Option<Mapped> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: a private read-only mapping; the bytes are only read while it lives. A file
        // truncated in place meanwhile could fault on access; loaded objects are replaced by
        // rename (a new inode), which leaves this mapping intact, and the build id is checked
        // before anything else is read.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        Some(Mapped(map))
    }
}

/// The vDSO's ELF image, from memory (it has no file).
fn vdso_image() -> Option<&'static [u8]> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 {
        return None;
    }
    // SAFETY: the kernel maps the vDSO's whole image, readable, at AT_SYSINFO_EHDR for the
    // life of the process; its ELF header is 64 bytes.
    let header = unsafe { std::slice::from_raw_parts(base as *const u8, 64) };
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |at: usize| u16::from_le_bytes(header[at..at + 2].try_into().unwrap_or([0; 2]));
    if &header[..4] != b"\x7fELF" || header[4] != 2 {
        return None;
    }
    // The section headers come last in the image: its end.
    let end = u64_at(0x28) + u64::from(u16_at(0x3c)) * u64::from(u16_at(0x3a));
    if end < 64 || end > 1 << 20 {
        return None;
    }
    // SAFETY: as above; `end` bytes is the image's extent per its own header (bounded).
    Some(unsafe { std::slice::from_raw_parts(base as *const u8, end as usize) })
}

/// Function symbols of one file, sorted by address: (start, size, name).
fn function_symbols<'d>(file: &object::File<'d>) -> Vec<(u64, u64, &'d str)> {
    let mut all: Vec<(u64, u64, bool, &str)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.is_global(), s.name().ok()?)))
        .filter(|s| !s.3.is_empty())
        .collect();
    // Of the names one address has (C libraries alias `clock_nanosleep`, `__clock_nanosleep`
    // and a local `__GI___clock_nanosleep`), keep a sized, exported one with the fewest leading
    // underscores.
    let underscores = |n: &str| n.len() - n.trim_start_matches('_').len();
    all.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(underscores(a.3).cmp(&underscores(b.3)))
            .then(a.3.cmp(b.3))
    });
    all.dedup_by_key(|s| s.0);
    all.into_iter()
        .map(|(a, size, _, n)| (a, size, n))
        .collect()
}

fn symbol_at<'d>(symbols: &[(u64, u64, &'d str)], svma: u64) -> Option<&'d str> {
    let i = symbols.partition_point(|s| s.0 <= svma).checked_sub(1)?;
    let (start, size, name) = symbols[i];
    (size == 0 || svma < start + size).then_some(name)
}

fn has_symtab(file: &object::File<'_>) -> bool {
    file.section_by_name(".symtab").is_some()
}

fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .or_else(|| file.section_by_name(".zdebug_info"))
        .is_some_and(|s| s.size() > 0)
}

/// The GNU build id of a file, as lowercase hex.
fn build_id(file: &object::File<'_>) -> Option<String> {
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// Resolves `addrs` (all inside `obj`) with a parsed DWARF context, or the symbol table alone.
struct ObjectResolver<'d> {
    symbols: Vec<(u64, u64, &'d str)>,
    dwarf: Option<
        addr2line::Context<addr2line::gimli::EndianSlice<'d, addr2line::gimli::RunTimeEndian>>,
    >,
}

impl<'d> ObjectResolver<'d> {
    fn new(
        file: &object::File<'d>,
        sections: &'d SectionStore<'d>,
        with_dwarf: bool,
    ) -> ObjectResolver<'d> {
        let dwarf = if with_dwarf && has_dwarf(file) {
            sections.context()
        } else {
            None
        };
        ObjectResolver {
            symbols: function_symbols(file),
            dwarf,
        }
    }

    fn frames(&self, svma: u64) -> Vec<FrameInfo> {
        let mut frames = Vec::new();
        if let Some(ctx) = &self.dwarf {
            if let Ok(mut iter) = ctx.find_frames(svma).skip_all_loads() {
                while let Ok(Some(frame)) = iter.next() {
                    let name = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| demangle(&n));
                    let Some(name) = name else { continue };
                    let (file, line) = frame.location.as_ref().map_or((None, 0), |l| {
                        (l.file.map(str::to_owned), l.line.unwrap_or(0))
                    });
                    frames.push(FrameInfo {
                        name,
                        file,
                        line: line.into(),
                    });
                }
            }
        }
        if frames.is_empty() {
            if let Some(name) = symbol_at(&self.symbols, svma) {
                let location = self
                    .dwarf
                    .as_ref()
                    .and_then(|ctx| ctx.find_location(svma).ok().flatten());
                frames.push(FrameInfo {
                    name: demangle(name),
                    file: location.as_ref().and_then(|l| l.file.map(str::to_owned)),
                    line: location.and_then(|l| l.line).unwrap_or(0).into(),
                });
            }
        }
        frames
    }
}

/// The DWARF sections of one file, decompressed where needed, for one resolution.
struct SectionStore<'d> {
    file: &'d object::File<'d>,
    /// Decompressed sections live here while the context borrows them.
    owned: typed_arena_lite::Arena,
}

mod typed_arena_lite {
    //! Keeps decompressed section buffers alive at stable addresses for one resolution.
    use std::cell::RefCell;

    #[derive(Default)]
    pub(super) struct Arena(RefCell<Vec<Box<[u8]>>>);

    impl Arena {
        /// Stores `bytes` and returns them for as long as the arena lives.
        pub(super) fn keep(&self, bytes: Vec<u8>) -> &[u8] {
            let boxed = bytes.into_boxed_slice();
            let ptr: *const [u8] = &*boxed;
            self.0.borrow_mut().push(boxed);
            // SAFETY: the boxed slice's heap buffer never moves and is freed only when the
            // arena drops; the returned borrow cannot outlive `self`.
            unsafe { &*ptr }
        }
    }
}

impl<'d> SectionStore<'d> {
    fn new(file: &'d object::File<'d>) -> SectionStore<'d> {
        SectionStore {
            file,
            owned: typed_arena_lite::Arena::default(),
        }
    }

    fn section(&'d self, name: &str) -> &'d [u8] {
        let Some(section) = self.file.section_by_name(name) else {
            return &[];
        };
        match section.uncompressed_data() {
            Ok(Cow::Borrowed(b)) => b,
            Ok(Cow::Owned(v)) => self.owned.keep(v),
            Err(_) => &[],
        }
    }

    fn context(
        &'d self,
    ) -> Option<
        addr2line::Context<addr2line::gimli::EndianSlice<'d, addr2line::gimli::RunTimeEndian>>,
    > {
        use addr2line::gimli;
        let endian = if self.file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<_, gimli::Error> {
            Ok(gimli::EndianSlice::new(self.section(id.name()), endian))
        })
        .ok()?;
        addr2line::Context::from_dwarf(dwarf).ok()
    }
}

impl Symbolizer {
    pub(crate) fn new(debuginfo: DebugInfo) -> Symbolizer {
        Symbolizer {
            debuginfo,
            ..Symbolizer::default()
        }
    }

    /// Resolves every address in `addrs` that is not cached yet (lookup addresses: pc, or
    /// return address minus one), reading each object's file once for all of them.
    pub(crate) fn prepare(&mut self, addrs: impl Iterator<Item = u64>, objects: &[LoadedObject]) {
        let mut by_object: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for addr in addrs {
            if self.cache.contains_key(&addr) {
                continue;
            }
            match objects.iter().position(|o| o.text.contains(&addr)) {
                Some(i) => by_object.entry(i).or_default().push(addr),
                None => {
                    self.cache.insert(addr, fallback(addr, None));
                }
            }
        }
        // Objects whose provisional names are due for their DWARF pass, new addresses or not.
        let now = std::time::Instant::now();
        for (i, o) in objects.iter().enumerate() {
            let key = (o.path.clone(), o.bias);
            let due = self
                .last_dwarf
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= DWARF_EVERY);
            if due && self.provisional.contains_key(&key) {
                by_object.entry(i).or_default();
            }
        }
        let parsed = !by_object.is_empty();
        for (i, mut addrs) in by_object {
            let obj = &objects[i];
            let key = (obj.path.clone(), obj.bias);
            let dwarf = self.debuginfo != DebugInfo::Off
                && self
                    .last_dwarf
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= DWARF_EVERY);
            if dwarf {
                self.last_dwarf.insert(key.clone(), now);
                addrs.extend(self.provisional.remove(&key).unwrap_or_default());
            } else if self.debuginfo != DebugInfo::Off {
                self.provisional
                    .entry(key)
                    .or_default()
                    .extend(addrs.iter().copied());
            }
            addrs.sort_unstable();
            addrs.dedup();
            let policy = if dwarf {
                self.debuginfo
            } else {
                DebugInfo::Off
            };
            let resolved = resolve_in_object(obj, &addrs, policy, self.debuginfo);
            for (addr, frames) in addrs.into_iter().zip(resolved) {
                let frames = if frames.is_empty() {
                    fallback(addr, Some(obj))
                } else {
                    frames.into()
                };
                self.cache.insert(addr, frames);
            }
        }
        if parsed {
            trim_heap();
        }
    }

    /// Frames for `addr` (a lookup address: pc, or return address minus one).
    pub(crate) fn resolve(&mut self, addr: u64, objects: &[LoadedObject]) -> Frames {
        if let Some(f) = self.cache.get(&addr) {
            return f.clone();
        }
        self.prepare(std::iter::once(addr), objects);
        self.cache
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| fallback(addr, None))
    }

    /// Number of cached addresses.
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

/// `object+offset` (or the bare address) for an address no symbol names.
fn fallback(addr: u64, obj: Option<&LoadedObject>) -> Frames {
    let name = match obj {
        Some(o) => format!("{}+{:#x}", short_path(&o.path), addr - o.bias),
        None => format!("{addr:#x}"),
    };
    Arc::from(vec![FrameInfo {
        name,
        file: None,
        line: 0,
    }])
}

/// Gives the memory freed by a resolution back to the OS. Parsing DWARF allocates tens of MiB
/// that are all freed when it ends, but glibc keeps freed memory in the (dump thread's) arena
/// unless asked; `malloc_trim` returns every free page of every arena.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The separate debug file of an object with build id `id`, if installed.
fn debug_file_path(id: &str) -> Option<String> {
    if id.len() < 3 {
        return None;
    }
    let path = format!("{DEBUG_DIR}/{}/{}.debug", &id[..2], &id[2..]);
    std::path::Path::new(&path).exists().then_some(path)
}

/// Frames for each of `addrs` (sorted, all in `obj`); an empty list where nothing names one.
///
/// `policy` says how much DWARF to parse now; `files` which separate debug files to read
/// (their symbol tables at least), as configured.
fn resolve_in_object(
    obj: &LoadedObject,
    addrs: &[u64],
    policy: DebugInfo,
    files: DebugInfo,
) -> Vec<Vec<FrameInfo>> {
    let nothing = || vec![Vec::new(); addrs.len()];
    let vdso;
    let mapped;
    let bytes: &[u8] = match Mapped::open(&obj.path) {
        Some(m) => {
            mapped = m;
            &mapped.0
        }
        None if obj.path.contains("vdso") => match vdso_image() {
            Some(image) => {
                vdso = image;
                vdso
            }
            None => return nothing(),
        },
        None => return nothing(),
    };
    let Ok(file) = object::File::parse(bytes) else {
        return nothing();
    };
    if !obj.build_id.is_empty() && build_id(&file).is_some_and(|id| id != obj.build_id) {
        return nothing(); // replaced on disk since it was loaded
    }
    // A separate debug file: always with `on`; with `auto` only for a stripped object (no
    // .symtab), whose internal functions would otherwise go unnamed, and then only its symbol
    // table.
    let debug_path = match files {
        DebugInfo::Off => None,
        DebugInfo::Auto if has_symtab(&file) => None,
        _ => debug_file_path(&obj.build_id),
    };
    let debug_mapped = debug_path.as_deref().and_then(Mapped::open);
    let debug_file = debug_mapped
        .as_ref()
        .and_then(|m| object::File::parse(&*m.0).ok());
    let with_dwarf = policy != DebugInfo::Off;
    let sections = SectionStore::new(&file);
    let own = ObjectResolver::new(&file, &sections, with_dwarf);
    let debug_sections = debug_file.as_ref().map(SectionStore::new);
    // `auto` reads only the separate file's symbol table (the names a stripped library lost);
    // its DWARF (inline frames and lines inside system libraries) is parsed with `on` only.
    let separate = match (&debug_file, &debug_sections) {
        (Some(f), Some(s)) => Some(ObjectResolver::new(f, s, policy == DebugInfo::On)),
        _ => None,
    };
    addrs
        .iter()
        .map(|&addr| {
            let svma = addr.wrapping_sub(obj.bias);
            let frames = separate
                .as_ref()
                .map(|r| r.frames(svma))
                .unwrap_or_default();
            if frames.is_empty() {
                own.frames(svma)
            } else {
                frames
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_this_binarys_functions_and_libc_and_caches_them() {
        let (objects, _) = crate::objects::loaded_objects(false);
        let here = a_function_to_find as *const () as usize as u64 + 1;
        let libc_fn = libc::getpid as *const () as usize as u64 + 1;
        for policy in [DebugInfo::Off, DebugInfo::Auto, DebugInfo::On] {
            let mut s = Symbolizer::new(policy);
            s.prepare([here, libc_fn].into_iter(), &objects);
            assert_eq!(s.len(), 2);
            let f = s.resolve(here, &objects);
            assert!(
                f.iter().any(|f| f.name.ends_with("a_function_to_find")),
                "{policy:?}: {f:?}"
            );
            let g = s.resolve(libc_fn, &objects);
            assert!(
                g.iter().any(|f| f.name.contains("getpid")),
                "{policy:?}: {g:?}"
            );
        }
    }

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("plain_c"), "plain_c");
    }

    #[test]
    fn unknown_addresses_get_a_fallback_name() {
        let mut s = Symbolizer::new(DebugInfo::Auto);
        let f = s.resolve(0x10, &[]);
        assert_eq!(f[0].name, "0x10");
    }
}
