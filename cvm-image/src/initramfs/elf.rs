//! ELF inspection: `PT_INTERP`, `DT_NEEDED`, `DT_RUNPATH` and one section's bytes, and
//! the ld.so-like library search that brings a dynamically linked binary's libraries.

use super::*;

/// What the dynamic loader needs to know about a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `PT_INTERP` (absent: statically linked, or a shared library).
    pub interp: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` or `DT_RPATH` directories.
    pub runpath: Vec<String>,
}

pub(super) fn rd<const N: usize>(b: &[u8], off: u64) -> Result<[u8; N], String> {
    let off = usize::try_from(off).map_err(|_| "offset out of range".to_owned())?;
    b.get(off..off.checked_add(N).ok_or("offset overflow")?)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("truncated at {off:#x}"))
}
pub(super) fn u16_at(b: &[u8], off: u64) -> Result<u16, String> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
pub(super) fn u32_at(b: &[u8], off: u64) -> Result<u32, String> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
pub(super) fn u64_at(b: &[u8], off: u64) -> Result<u64, String> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}
pub(super) fn c_str_at(b: &[u8], off: u64) -> Result<String, String> {
    let s = usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..))
        .ok_or("string offset out of range")?;
    let end = s
        .iter()
        .position(|&c| c == 0)
        .ok_or("unterminated string")?;
    String::from_utf8(s[..end].to_vec()).map_err(|_| "string is not UTF-8".to_owned())
}

pub(super) fn check_elf64(b: &[u8]) -> Result<(), String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if b[4] != 2 || b[5] != 1 || u16_at(b, 0x12)? != 62 {
        return Err("not 64-bit little-endian x86-64".into());
    }
    Ok(())
}

/// Reads `PT_INTERP` and the `DT_NEEDED`/`DT_RUNPATH` entries of an ELF64 x86-64 file.
pub fn elf_deps(b: &[u8]) -> Result<ElfDeps, String> {
    check_elf64(b)?;
    let phoff = u64_at(b, 0x20)?;
    let phentsize = u64::from(u16_at(b, 0x36)?);
    let phnum = u64::from(u16_at(b, 0x38)?);
    let mut deps = ElfDeps::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (ty, off, vaddr, filesz) = (
            u32_at(b, ph)?,
            u64_at(b, ph + 8)?,
            u64_at(b, ph + 16)?,
            u64_at(b, ph + 32)?,
        );
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            3 => deps.interp = Some(c_str_at(b, off)?),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(deps);
    };
    let mut strtab = None;
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    for i in 0..dyn_size / 16 {
        let tag = u64_at(b, dyn_off + 16 * i)?;
        let val = u64_at(b, dyn_off + 16 * i + 8)?;
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            15 | 29 => runpath.push(val),
            _ => {}
        }
    }
    if needed.is_empty() && runpath.is_empty() {
        return Ok(deps);
    }
    let strtab = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    let strtab_off = loads
        .iter()
        .find(|(va, _, sz)| strtab >= *va && strtab < va + sz)
        .map(|(va, off, _)| strtab - va + off)
        .ok_or("DT_STRTAB outside the loaded segments")?;
    for n in needed {
        deps.needed.push(c_str_at(b, strtab_off + n)?);
    }
    for r in runpath {
        deps.runpath.extend(
            c_str_at(b, strtab_off + r)?
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(deps)
}

/// The bytes of the section called `name`, if any.
pub(super) fn elf_section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    check_elf64(b)?;
    let shoff = u64_at(b, 0x28)?;
    let shentsize = u64::from(u16_at(b, 0x3A)?);
    let shnum = u64::from(u16_at(b, 0x3C)?);
    let shstrndx = u64::from(u16_at(b, 0x3E)?);
    let names_off = u64_at(b, shoff + shstrndx * shentsize + 0x18)?;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        if c_str_at(b, names_off + u64::from(u32_at(b, sh)?))? == name {
            let (off, size) = (u64_at(b, sh + 0x18)?, u64_at(b, sh + 0x20)?);
            let r = usize::try_from(off)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, s)| b.get(o..o.checked_add(s)?));
            return r
                .map(Some)
                .ok_or_else(|| format!("section {name} out of range"));
        }
    }
    Ok(None)
}

/// Where shared libraries are searched after `DT_RUNPATH`: Debian's multiarch
/// directories (its ld.so's built-in path), then the classic ones.
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Adds an ELF program at `dest`, and if it is dynamically linked its loader and its
/// libraries (recursively). Returns the number of libraries added (loader included).
pub(super) fn add_elf(ar: &mut Archive, src: &Path, dest: &str) -> Result<usize> {
    let data = read(src)?;
    let deps = elf_deps(&data).map_err(|e| InitramfsError::Elf(src.to_owned(), e))?;
    ar.add(dest, Entry::File { data, mode: 0o755 });
    let mut added = 0;
    if let Some(interp) = &deps.interp {
        if !ar.has(interp) {
            let data = read(Path::new(interp))?;
            check_elf64(&data).map_err(|e| InitramfsError::Elf(interp.into(), e))?;
            ar.add(interp, Entry::File { data, mode: 0o755 });
            added += 1;
        }
    }
    let mut queue: Vec<(String, String, Vec<String>)> = deps
        .needed
        .iter()
        .map(|n| (n.clone(), dest.to_owned(), origin(&deps.runpath, src)))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((lib, by, runpath)) = queue.pop() {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let (path, data) = find_library(&lib, &runpath).ok_or_else(|| {
            let mut dirs = runpath.clone();
            dirs.extend(LIBRARY_DIRS.iter().map(|s| s.to_string()));
            InitramfsError::LibraryNotFound {
                lib: lib.clone(),
                by: by.clone(),
                dirs: dirs.join(":"),
            }
        })?;
        let d = elf_deps(&data).map_err(|e| InitramfsError::Elf(path.clone(), e))?;
        let dest_lib = path.to_string_lossy().into_owned();
        for n in &d.needed {
            queue.push((n.clone(), lib.clone(), origin(&d.runpath, &path)));
        }
        if ar.has(&dest_lib) {
            continue;
        }
        // libc names the loader as a library too: link to the copy at PT_INTERP.
        let same_as_interp = deps.interp.as_ref().is_some_and(|i| {
            matches!(
                (std::fs::canonicalize(i), std::fs::canonicalize(&path)),
                (Ok(a), Ok(b)) if a == b
            )
        });
        if let (true, Some(i)) = (same_as_interp, &deps.interp) {
            ar.add(&dest_lib, Entry::Symlink(i.clone()));
        } else {
            ar.add(&dest_lib, Entry::File { data, mode: 0o755 });
            added += 1;
        }
    }
    Ok(added)
}

/// RUNPATH entries with `$ORIGIN` resolved against the file's directory.
pub(super) fn origin(runpath: &[String], file: &Path) -> Vec<String> {
    let dir = file
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    runpath
        .iter()
        .map(|r| r.replace("${ORIGIN}", &dir).replace("$ORIGIN", &dir))
        .collect()
}

/// The first x86-64 ELF called `lib` in `runpath`, then [`LIBRARY_DIRS`].
pub(super) fn find_library(lib: &str, runpath: &[String]) -> Option<(PathBuf, Vec<u8>)> {
    if lib.contains('/') {
        let data = std::fs::read(lib).ok()?;
        return check_elf64(&data).ok().map(|()| (PathBuf::from(lib), data));
    }
    runpath
        .iter()
        .map(String::as_str)
        .chain(LIBRARY_DIRS.iter().copied())
        .map(|d| Path::new(d).join(lib))
        .find_map(|p| {
            let data = std::fs::read(&p).ok()?;
            check_elf64(&data).ok().map(|()| (p, data))
        })
}
