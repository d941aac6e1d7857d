//! The objects (executable, shared libraries, vDSO) loaded in this process.
//!
//! Read from memory with `dl_iterate_phdr`, never from disk: a deployed binary may have been
//! replaced or deleted since it started. Used for the unwinder's module list (with copies of
//! `.eh_frame_hdr` and `.eh_frame`) and for the pprof mappings (path, range, build id).

use std::ops::Range;

/// One loaded object.
#[derive(Clone, Debug, Default)]
pub struct LoadedObject {
    /// Path of the file (the executable's own path for the main program).
    pub path: String,
    /// Whether this is the main program (its file is read through `/proc/self/exe`, which
    /// stays valid when the path is replaced or deleted).
    pub is_main: bool,
    /// Load bias: actual address minus the address stated in the file.
    pub bias: u64,
    /// Actual addresses of the executable segments (their union).
    pub text: Range<u64>,
    /// File offset of `text.start`.
    pub text_file_offset: u64,
    /// Actual addresses of each segment that is both executable and readable, one range per
    /// segment (the instruction reads of wall samples are confined to these).
    pub readable_code: Vec<Range<u64>>,
    /// GNU build id, lowercase hex, or empty.
    pub build_id: String,
    /// Actual address and copy of `.eh_frame_hdr`, when unwind data was asked for.
    pub eh_frame_hdr: Option<(u64, Vec<u8>)>,
    /// Actual address and copy of `.eh_frame`, when unwind data was asked for.
    pub eh_frame: Option<(u64, Vec<u8>)>,
}

/// Counters that change whenever an object is loaded or unloaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    adds: u64,
    subs: u64,
}

#[cfg(threadprof_sampling)]
mod imp {
    use super::*;
    use libc::{c_int, c_void, dl_phdr_info, size_t, Elf64_Phdr};
    use std::ffi::CStr;

    struct Walk {
        with_unwind_data: bool,
        objects: Vec<LoadedObject>,
        generation: Generation,
        only_generation: bool,
    }

    /// Reads `len` bytes at `addr`.
    ///
    /// # Safety
    /// `addr..addr+len` must lie inside a mapped, readable segment of a loaded object.
    unsafe fn bytes(addr: u64, len: u64) -> &'static [u8] {
        // SAFETY: the caller guarantees the range is mapped and readable; the object stays
        // loaded for the duration of the dl_iterate_phdr callback that calls this.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }
    }

    fn read_u32(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// Decodes the `eh_frame_ptr` field of an `.eh_frame_hdr` located at `hdr_addr`.
    fn eh_frame_address(hdr: &[u8], hdr_addr: u64) -> Option<u64> {
        let (&version, &enc) = (hdr.first()?, hdr.get(1)?);
        if version != 1 || enc == 0xff {
            return None;
        }
        let field = hdr.get(4..)?;
        let (value, _len): (i64, usize) = match enc & 0x0f {
            0x00 | 0x04 | 0x0c => (i64::from_le_bytes(field.get(..8)?.try_into().ok()?), 8),
            0x03 => (
                i64::from(u32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
                4,
            ),
            0x0b => (
                i64::from(i32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
                4,
            ),
            _ => return None,
        };
        let base = match enc & 0x70 {
            0x00 => 0,
            0x10 => hdr_addr + 4, // pc-relative: relative to the field itself
            0x30 => hdr_addr,     // data-relative: relative to the start of .eh_frame_hdr
            _ => return None,
        };
        Some(base.wrapping_add_signed(value))
    }

    /// Length of `.eh_frame` starting at `start`: CIE/FDE records up to the zero terminator,
    /// never past `limit`.
    fn eh_frame_len(start: u64, limit: u64) -> u64 {
        let mut pos = start;
        while pos + 4 <= limit {
            // SAFETY: pos+4 <= limit, the end of the mapped segment holding .eh_frame.
            let len = u64::from(read_u32(unsafe { bytes(pos, 4) }, 0).unwrap_or(0));
            if len == 0 {
                return pos + 4 - start;
            }
            let next = if len == 0xffff_ffff {
                if pos + 12 > limit {
                    break;
                }
                // SAFETY: pos+12 <= limit, inside the segment.
                let b = unsafe { bytes(pos + 4, 8) };
                pos + 12 + u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8]))
            } else {
                pos + 4 + len
            };
            if next > limit || next <= pos {
                break;
            }
            pos = next;
        }
        limit.min(pos) - start
    }

    fn build_id(note: &[u8]) -> Option<String> {
        let mut at = 0;
        while at + 12 <= note.len() {
            let namesz = read_u32(note, at)? as usize;
            let descsz = read_u32(note, at + 4)? as usize;
            let ty = read_u32(note, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let end = desc_at + descsz.next_multiple_of(4);
            if ty == 3 && note.get(name_at..name_at + namesz)? == b"GNU\0" {
                let desc = note.get(desc_at..desc_at + descsz)?;
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            at = end;
        }
        None
    }

    fn object(info: &dl_phdr_info, with_unwind_data: bool) -> Option<LoadedObject> {
        let bias = info.dlpi_addr;
        // SAFETY: dl_iterate_phdr passes a valid array of dlpi_phnum program headers.
        let phdrs: &[Elf64_Phdr] =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let mut obj = LoadedObject {
            bias,
            ..LoadedObject::default()
        };
        let (mut text_start, mut text_end) = (u64::MAX, 0);
        for ph in phdrs {
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                let start = bias + ph.p_vaddr;
                if start < text_start {
                    text_start = start;
                    obj.text_file_offset = ph.p_offset;
                }
                text_end = text_end.max(start + ph.p_memsz);
                if ph.p_flags & libc::PF_R != 0 {
                    obj.readable_code.push(start..start + ph.p_memsz);
                }
            } else if ph.p_type == libc::PT_NOTE && obj.build_id.is_empty() {
                // SAFETY: PT_NOTE segments are inside a loaded segment and mapped readable.
                let note = unsafe { bytes(bias + ph.p_vaddr, ph.p_filesz) };
                obj.build_id = build_id(note).unwrap_or_default();
            }
        }
        if text_start >= text_end {
            return None;
        }
        obj.text = text_start..text_end;
        // SAFETY: dlpi_name is a valid NUL-terminated string (possibly empty) for the callback.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
        obj.is_main = name.is_empty();
        obj.path = if name.is_empty() {
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "[main]".into())
        } else {
            name.into_owned()
        };
        if with_unwind_data {
            let hdr = phdrs.iter().find(|ph| ph.p_type == libc::PT_GNU_EH_FRAME);
            if let Some(ph) = hdr {
                let hdr_addr = bias + ph.p_vaddr;
                // SAFETY: PT_GNU_EH_FRAME lies inside a loaded, readable segment.
                let hdr_bytes = unsafe { bytes(hdr_addr, ph.p_memsz) };
                let segment_end = |addr: u64| {
                    phdrs
                        .iter()
                        .filter(|p| p.p_type == libc::PT_LOAD)
                        .map(|p| {
                            (
                                bias + p.p_vaddr,
                                bias + p.p_vaddr + p.p_filesz.min(p.p_memsz),
                            )
                        })
                        .find(|&(s, e)| (s..e).contains(&addr))
                        .map(|(_, e)| e)
                };
                if let Some(eh) = eh_frame_address(hdr_bytes, hdr_addr) {
                    if let Some(end) = segment_end(eh) {
                        let len = eh_frame_len(eh, end);
                        // SAFETY: eh..eh+len lies inside the loaded segment ending at `end`.
                        let data = unsafe { bytes(eh, len) }.to_vec();
                        obj.eh_frame_hdr = Some((hdr_addr, hdr_bytes.to_vec()));
                        obj.eh_frame = Some((eh, data));
                    }
                }
            }
        }
        Some(obj)
    }

    unsafe extern "C" fn callback(
        info: *mut dl_phdr_info,
        size: size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `&mut Walk` passed to dl_iterate_phdr below, and `info` is
        // valid for the duration of this call.
        let (walk, info) = unsafe { (&mut *(data as *mut Walk), &*info) };
        if size >= std::mem::size_of::<dl_phdr_info>() {
            walk.generation = Generation {
                adds: info.dlpi_adds,
                subs: info.dlpi_subs,
            };
        }
        if walk.only_generation {
            return 1; // stop after the first object
        }
        if let Some(obj) = object(info, walk.with_unwind_data) {
            walk.objects.push(obj);
        }
        0
    }

    fn walk(with_unwind_data: bool, only_generation: bool) -> Walk {
        let mut walk = Walk {
            with_unwind_data,
            objects: Vec::new(),
            generation: Generation::default(),
            only_generation,
        };
        // SAFETY: the callback only reads the headers it is given and writes to `walk`, which
        // outlives the call. A panic cannot cross it: `object` returns Options, and its
        // slice indexing uses checked accessors.
        unsafe { libc::dl_iterate_phdr(Some(callback), &mut walk as *mut Walk as *mut c_void) };
        walk
    }

    pub fn loaded_objects(with_unwind_data: bool) -> (Vec<LoadedObject>, Generation) {
        let w = walk(with_unwind_data, false);
        (w.objects, w.generation)
    }

    pub fn generation() -> Generation {
        walk(false, true).generation
    }
}

#[cfg(not(threadprof_sampling))]
mod imp {
    use super::*;
    pub fn loaded_objects(_with_unwind_data: bool) -> (Vec<LoadedObject>, Generation) {
        (Vec::new(), Generation::default())
    }
    pub fn generation() -> Generation {
        Generation::default()
    }
}

/// The objects loaded now, with copies of their unwind sections when `with_unwind_data`.
pub fn loaded_objects(with_unwind_data: bool) -> (Vec<LoadedObject>, Generation) {
    imp::loaded_objects(with_unwind_data)
}

/// The loader's add/remove counters, cheap to poll.
pub fn generation() -> Generation {
    imp::generation()
}

#[cfg(all(test, threadprof_sampling))]
mod tests {
    use super::*;

    #[test]
    fn finds_this_executable_with_unwind_data_and_build_id_format() {
        let (objs, _) = loaded_objects(true);
        let here =
            finds_this_executable_with_unwind_data_and_build_id_format as fn() as usize as u64;
        let me = objs
            .iter()
            .find(|o| o.text.contains(&here))
            .expect("own text");
        assert!(me.eh_frame.as_ref().is_some_and(|(_, d)| d.len() > 1000));
        assert!(me.eh_frame_hdr.is_some());
        assert!(me.build_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(objs.iter().any(|o| o.path.contains("libc")));
        // This function's code is in one readable, executable segment, inside the text.
        let seg = me
            .readable_code
            .iter()
            .find(|r| r.contains(&here))
            .expect("own code segment");
        assert!(me.text.start <= seg.start && seg.end <= me.text.end);
    }
}
