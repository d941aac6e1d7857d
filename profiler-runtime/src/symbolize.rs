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
const DWARF_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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

/// Largest DWARF read for one object, in bytes after decompression. Above it the object is
/// named from its symbol tables alone (one warning): decompressing a huge binary's DWARF into
/// the heap would cost the host that much memory for the time of a dump.
const MAX_DWARF_BYTES: u64 = 256 << 20;

/// The DWARF sections names and lines need (not locations, macros or type units).
const DWARF_SECTIONS: &[&str] = &[
    ".debug_info",
    ".debug_abbrev",
    ".debug_str",
    ".debug_str_offsets",
    ".debug_line",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_addr",
    ".debug_aranges",
];

/// Opens a file to read symbols from: an absolute path to a regular file only, without
/// blocking (a FIFO or a hung mount at a stale path must not stop the dump thread).
fn open_regular(path: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !path.starts_with('/') {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// The vDSO's ELF image, from memory (it has no file): the `[vdso]` mapping of
/// `/proc/self/maps`, so every byte read is inside it.
fn vdso_image(obj: &LoadedObject) -> Option<&'static [u8]> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 || !obj.text.contains(&base) && obj.bias != base {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let range = line.split(' ').next()?;
    let (lo, hi) = range.split_once('-')?;
    let (lo, hi) = (
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
    );
    if lo != base || hi <= lo {
        return None;
    }
    // SAFETY: the kernel maps the vDSO readable at [lo, hi) for the life of the process (the
    // maps line says so); nothing unmaps it but a checkpoint/restore tool, which also
    // rewrites the auxiliary vector this was checked against.
    Some(unsafe { std::slice::from_raw_parts(lo as *const u8, (hi - lo) as usize) })
}

/// The function symbol naming each of `svmas` (sorted file addresses), in one pass over the
/// symbol tables (`.symtab` and `.dynsym`): of the symbols covering an address, the nearest
/// below it; of the names one address has (C libraries alias `clock_nanosleep`,
/// `__clock_nanosleep` and a local `__GI___clock_nanosleep`), a sized, exported one with the
/// fewest leading underscores. A symbol without a size extends to the end of its section.
fn symbols_for<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    svmas: &[u64],
) -> Vec<Option<&'d str>> {
    type Candidate<'n> = (u64, bool, usize, &'n str);
    let better = |a: &Candidate<'_>, b: &Candidate<'_>| {
        (a.0, a.1, std::cmp::Reverse(a.2), std::cmp::Reverse(a.3))
            > (b.0, b.1, std::cmp::Reverse(b.2), std::cmp::Reverse(b.3))
    };
    let mut best: Vec<Option<Candidate<'d>>> = vec![None; svmas.len()];
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != object::SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let start = sym.address();
        let size = if sym.size() > 0 {
            sym.size()
        } else {
            sym.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .map_or(0, |sec| {
                    sec.address()
                        .saturating_add(sec.size())
                        .saturating_sub(start)
                })
        };
        let end = start.saturating_add(size);
        let lo = svmas.partition_point(|&a| a < start);
        let hi = svmas.partition_point(|&a| a < end);
        if lo >= hi {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        // A symbol-table name may carry its version (`clock_nanosleep@@GLIBC_2.17`).
        let name = name.split('@').next().unwrap_or(name);
        if name.is_empty() {
            continue;
        }
        let underscores = name.len() - name.trim_start_matches('_').len();
        let candidate = (start, sym.size() > 0 && sym.is_global(), underscores, name);
        for slot in &mut best[lo..hi] {
            if slot.as_ref().is_none_or(|b| better(&candidate, b)) {
                *slot = Some(candidate);
            }
        }
    }
    best.into_iter().map(|c| c.map(|c| c.3)).collect()
}

fn has_symtab<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> bool {
    file.section_by_name(".symtab").is_some()
}

/// The GNU build id of a file, as lowercase hex.
fn build_id<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> Option<String> {
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

type Endian = addr2line::gimli::RunTimeEndian;
type Sections<'d> = addr2line::gimli::DwarfSections<Cow<'d, [u8]>>;
type Context<'s> = addr2line::Context<addr2line::gimli::EndianSlice<'s, Endian>>;

/// The DWARF sections of `file` that names and lines need, decompressed where needed; `None`
/// without debug info or when it is too big (see [`MAX_DWARF_BYTES`]).
fn dwarf_sections<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    path: &str,
) -> Option<Sections<'d>> {
    let info = file.section_by_name(".debug_info")?;
    if info.size() == 0 {
        return None;
    }
    let total: u64 = DWARF_SECTIONS
        .iter()
        .filter_map(|name| file.section_by_name(name))
        .map(|s| {
            s.compressed_data()
                .map_or(s.size(), |c| c.uncompressed_size)
        })
        .sum();
    if total > MAX_DWARF_BYTES {
        crate::diagnostics::warn(
            &format!("dwarf-too-big:{path}"),
            &format!(
                "{path}: {} MiB of debug info is more than symbolization reads ({} MiB); its \
                 functions are named from the symbol table, without inline frames or lines",
                total >> 20,
                MAX_DWARF_BYTES >> 20
            ),
        );
        return None;
    }
    addr2line::gimli::DwarfSections::load(|id| -> Result<Cow<'d, [u8]>, ()> {
        let name = id.name();
        if !DWARF_SECTIONS.contains(&name) {
            return Ok(Cow::Borrowed(&[]));
        }
        Ok(file
            .section_by_name(name)
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    })
    .ok()
}

fn context<'s>(sections: &'s Sections<'_>, endian: Endian) -> Option<Context<'s>> {
    let dwarf = sections.borrow(|s| addr2line::gimli::EndianSlice::new(s, endian));
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// Names addresses of one file: from its DWARF when parsed, else its symbol tables.
struct ObjectResolver<'d, 's> {
    /// The symbol naming each address asked for, in the caller's order.
    symbols: Vec<Option<&'d str>>,
    dwarf: Option<Context<'s>>,
}

impl ObjectResolver<'_, '_> {
    /// Frames for the `i`th address asked for, at file address `svma`.
    fn frames(&self, i: usize, svma: u64) -> Vec<FrameInfo> {
        let mut frames = Vec::new();
        // Whether the outermost DWARF frame had no name (a DIE without one, or reachable only
        // through a supplementary file not loaded): the symbol table names it instead.
        let mut outermost_unnamed = false;
        if let Some(ctx) = &self.dwarf {
            if let Ok(mut iter) = ctx.find_frames(svma).skip_all_loads() {
                while let Ok(Some(frame)) = iter.next() {
                    let name = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| demangle(&n));
                    let Some(name) = name else {
                        outermost_unnamed = true;
                        continue;
                    };
                    outermost_unnamed = false;
                    let (file, line) = frame.location.as_ref().map_or((None, 0), |l| {
                        (l.file.map(str::to_owned), l.line.unwrap_or(0))
                    });
                    frames.push(FrameInfo { name, file, line });
                }
            }
        }
        if frames.is_empty() || outermost_unnamed {
            if let Some(name) = self.symbols.get(i).copied().flatten() {
                let location = if frames.is_empty() {
                    self.dwarf
                        .as_ref()
                        .and_then(|ctx| ctx.find_location(svma).ok().flatten())
                } else {
                    None
                };
                frames.push(FrameInfo {
                    name: demangle(name),
                    file: location.as_ref().and_then(|l| l.file.map(str::to_owned)),
                    line: location.and_then(|l| l.line).unwrap_or(0),
                });
            }
        }
        frames
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
            if self.provisional.is_empty() {
                break;
            }
            let key = (o.path.clone(), o.bias);
            let due = self
                .last_dwarf
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= DWARF_EVERY);
            if due && self.provisional.contains_key(&key) {
                by_object.entry(i).or_default();
            }
        }
        let mut parsed = false;
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
            let (resolved, dwarf_parsed) = resolve_in_object(obj, &addrs, policy, self.debuginfo);
            parsed |= dwarf_parsed;
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
        Some(o) => format!("{}+{:#x}", short_path(&o.path), addr.wrapping_sub(o.bias)),
        None => format!("{addr:#x}"),
    };
    Arc::from(vec![FrameInfo {
        name,
        file: None,
        line: 0,
    }])
}

/// Gives the memory freed by a DWARF parse back to the OS. Parsing allocates tens of MiB that
/// are all freed when it ends, but glibc keeps freed memory in the (dump thread's) arena unless
/// asked; `malloc_trim` returns every free page of every arena. Called only after a DWARF
/// parse, which happens at most once a minute per object; with another global allocator it
/// releases little, and costs little.
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
/// Also says whether DWARF was parsed.
///
/// `policy` says how much DWARF to parse now; `files` which separate debug files to read
/// (their symbol tables at least), as configured. Files are read with `pread` through a
/// cache of the ranges asked for, never mapped: a file rewritten in place while it is read
/// (an unloaded library, a debug file) gives wrong bytes at worst, never SIGBUS.
fn resolve_in_object(
    obj: &LoadedObject,
    addrs: &[u64],
    policy: DebugInfo,
    files: DebugInfo,
) -> (Vec<Vec<FrameInfo>>, bool) {
    let nothing = || (vec![Vec::new(); addrs.len()], false);
    let path = if obj.is_main {
        "/proc/self/exe"
    } else {
        obj.path.as_str()
    };
    match open_regular(path) {
        Some(f) => {
            let cache = object::ReadCache::new(f);
            match object::File::parse(&cache) {
                Ok(file) => resolve_in_file(obj, &file, addrs, policy, files),
                Err(_) => nothing(),
            }
        }
        None => match vdso_image(obj) {
            Some(image) => match object::File::parse(image) {
                Ok(file) => resolve_in_file(obj, &file, addrs, policy, files),
                Err(_) => nothing(),
            },
            None => nothing(),
        },
    }
}

fn resolve_in_file<'d, R: object::ReadRef<'d>>(
    obj: &LoadedObject,
    file: &object::File<'d, R>,
    addrs: &[u64],
    policy: DebugInfo,
    files: DebugInfo,
) -> (Vec<Vec<FrameInfo>>, bool) {
    let nothing = || (vec![Vec::new(); addrs.len()], false);
    if !obj.build_id.is_empty() && build_id(file).as_deref() != Some(obj.build_id.as_str()) {
        return nothing(); // not the file that was loaded (replaced on disk since)
    }
    let endian = if file.is_little_endian() {
        Endian::Little
    } else {
        Endian::Big
    };
    // A separate debug file: always with `on`; with `auto` only for a stripped object (no
    // .symtab), whose internal functions would otherwise go unnamed, and then only its symbol
    // table.
    let debug_path = match files {
        DebugInfo::Off => None,
        DebugInfo::Auto if has_symtab(file) => None,
        _ => debug_file_path(&obj.build_id),
    };
    let debug_cache = debug_path
        .as_deref()
        .and_then(open_regular)
        .map(object::ReadCache::new);
    let debug_file = debug_cache
        .as_ref()
        .and_then(|c| object::File::parse(c).ok());
    let own_sections = if policy != DebugInfo::Off {
        dwarf_sections(file, &obj.path)
    } else {
        None
    };
    let debug_sections = match (&debug_file, policy) {
        (Some(f), DebugInfo::On) => dwarf_sections(f, debug_path.as_deref().unwrap_or("")),
        _ => None,
    };
    let parsed = own_sections.is_some() || debug_sections.is_some();
    // `addrs` is sorted; so are the file addresses (one bias).
    let svmas: Vec<u64> = addrs.iter().map(|a| a.wrapping_sub(obj.bias)).collect();
    let own = ObjectResolver {
        symbols: symbols_for(file, &svmas),
        dwarf: own_sections.as_ref().and_then(|s| context(s, endian)),
    };
    let separate = debug_file.as_ref().map(|f| ObjectResolver {
        symbols: symbols_for(f, &svmas),
        dwarf: debug_sections.as_ref().and_then(|s| context(s, endian)),
    });
    let frames = svmas
        .iter()
        .enumerate()
        .map(|(i, &svma)| {
            let frames = separate
                .as_ref()
                .map(|r| r.frames(i, svma))
                .unwrap_or_default();
            if frames.is_empty() {
                own.frames(i, svma)
            } else {
                frames
            }
        })
        .collect();
    (frames, parsed)
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
    fn debug_info_gives_file_and_line_unless_off() {
        // Test builds carry full debug info.
        let (objects, _) = crate::objects::loaded_objects(false);
        let here = a_function_to_find as *const () as usize as u64 + 1;
        let mut s = Symbolizer::new(DebugInfo::Auto);
        let f = s.resolve(here, &objects);
        let frame = f
            .iter()
            .find(|f| f.name.ends_with("a_function_to_find"))
            .unwrap();
        assert!(
            frame
                .file
                .as_deref()
                .is_some_and(|p| p.ends_with("symbolize.rs"))
                && frame.line > 0,
            "{frame:?}"
        );
        let mut off = Symbolizer::new(DebugInfo::Off);
        let g = off.resolve(here, &objects);
        assert!(g.iter().all(|f| f.file.is_none() && f.line == 0), "{g:?}");
        assert!(g.iter().any(|f| f.name.ends_with("a_function_to_find")));
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
